"""The model: the network, its transforms, the BraTS metrics, and starting weights from the MONAI model zoo."""
