"""OHIF signs in with OpenID Connect itself: authorization code with PKCE, against the deployment's provider.

Without it a browser user could only pass a token in the URL (``?token=``), where it stays in the history and the
server's logs, and is lost when Next Sample reloads the page. OHIF 3.10 carries oidc-client-ts: given ``oidc`` in its
configuration (``window.config.oidc``) it sends the user to the provider's login page, exchanges the code for tokens
with PKCE (a browser keeps no client secret), sends the access token with every DICOMweb request, renews it with the
refresh token before it expires, and signs out through the provider's end-session endpoint (``/ohif/logout``). A page
reload (Next Sample) goes back through the provider, whose session signs the user in again without a form.

One gap is filled here (``ohif_sign_in.js``): OHIF keeps the user it got at sign-in and never takes the renewed one,
so its requests would carry an expired token after the first renewal; the script hands OHIF each renewed user.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import BrowserSignIn

RENEWED_USER_SCRIPT = Path(__file__).with_name("ohif_sign_in.js")
CALLBACK_PATH = "/callback"  # under OHIF's /ohif/: the redirect URI to register with the provider is <origin>/ohif/callback
SIGNED_OUT_PATH = "/"  # where the provider sends the browser after sign-out: <origin>/ohif/


def sign_in_script(sign_in: BrowserSignIn) -> str:
    """JavaScript appended to OHIF's ``app-config.js``: its ``oidc`` setting, then the renewed-user script."""
    client = {
        "authority": sign_in.authority,
        "client_id": sign_in.client_id,
        "redirect_uri": CALLBACK_PATH,
        "post_logout_redirect_uri": SIGNED_OUT_PATH,
        "response_type": "code",  # OHIF's oidc-client-ts client: the code flow with PKCE
        "scope": sign_in.scope,
        "automaticSilentRenew": True,
        # Signing out ends the session at the provider, and with it the session's refresh token (Keycloak and
        # oidc-provider alike). OHIF would also revoke the tokens first, but a JWT access token cannot be revoked at
        # every provider, and oidc-client-ts then abandons the sign-out: the access token simply expires within minutes.
        "revokeAccessTokenOnSignout": False,
    }
    # OHIF compares the page's path with the callback's path less routerBasename; with the shipped '/ohif/' that leaves
    # 'callback' against '/callback', so the callback page is taken for the page to return to, and the sign-in loops
    # back to it ("No matching state found in storage"). Without the trailing slash the two match.
    basename = "window.config.routerBasename = window.config.routerBasename.replace(/\\/+$/, '');\n"
    return basename + f"window.config.oidc = [{json.dumps(client)}];\n" + RENEWED_USER_SCRIPT.read_text()
