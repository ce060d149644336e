"""HTTP routes the app adds to (or replaces in) MONAI Label's server."""
