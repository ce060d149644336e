// BraTS Label: OHIF takes each renewed sign-in (appended to OHIF's app-config.js after its oidc setting).
// oidc-client-ts renews the access token before it expires and keeps the renewed user in the tab's session storage,
// but OHIF holds on to the user it got at sign-in and keeps sending that user's token. Every few seconds this hands
// OHIF the stored user when its token is newer than OHIF's. Nothing here puts a token in a URL.
(function followRenewedSignIn() {
  const POLL_MS = 3000;
  const client = window.config.oidc[0];
  const key = `oidc.user:${client.authority}:${client.client_id}`;
  window.setInterval(() => {
    const auth = window.services?.userAuthenticationService;
    const text = window.sessionStorage.getItem(key);
    if (!auth || !text) {
      return;
    }
    const stored = JSON.parse(text);
    const current = auth.getUser();
    const fresh = stored.expires_at && stored.expires_at * 1000 > Date.now();
    if (current && fresh && stored.access_token !== current.access_token) {
      auth.setUser({ ...current, ...stored, expired: false });
    }
  }, POLL_MS);
})();
