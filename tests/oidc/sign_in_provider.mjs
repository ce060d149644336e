// A real OpenID provider for the browser sign-in test: panva's oidc-provider with its own login page (a user name
// and a password typed into a form), the authorization code flow with PKCE for OHIF's public client, refresh
// tokens, RP-initiated logout, and JWT access tokens for the server's audience. The user's role is named by the
// user name: "dr_<role>" holds "monailabel-<role>" (Keycloak's realm_access.roles claim); client "brats-admin" gets
// an admin's token by client credentials, for the test's own calls. Access tokens live
// ACCESS_TTL seconds, so the viewer must refresh them while the test runs. Prints one JSON line when it listens.
//   node sign_in_provider.mjs PORT AUDIENCE VIEWER_ORIGIN CLIENT_ID ACCESS_TTL
import { generateKeyPairSync } from 'node:crypto';
import { importJWK, jwtVerify } from 'jose';
import Provider from 'oidc-provider';

const [port, audience, viewerOrigin, clientId, accessTtl] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const ROLES = ['user', 'annotator', 'reviewer', 'admin'];
const PASSWORD = 'correct horse battery staple'; // the test types it; any other is refused
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'brats-sign-in-key', use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  jwks: { keys: [jwk] },
  clients: [{
    client_id: clientId,
    token_endpoint_auth_method: 'none', // a browser keeps no secret: PKCE instead
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [`${viewerOrigin}/ohif/callback`],
    post_logout_redirect_uris: [`${viewerOrigin}/ohif/`],
  }, {
    client_id: 'brats-admin', // the test's own calls (the server's readiness, its listing): client credentials
    client_secret: 'secret-admin',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
  }],
  pkce: { required: () => true },
  scopes: ['openid', 'profile', 'offline_access'],
  findAccount: (ctx, id) => ({ accountId: id, claims: () => ({ sub: id, preferred_username: id }) }),
  features: {
    devInteractions: { enabled: true }, // the provider's login page; the password is checked below
    clientCredentials: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    revocation: { enabled: true }, // OHIF revokes its tokens when signing out, as Keycloak allows
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({ audience, scope: 'openid profile', accessTokenFormat: 'jwt', accessTokenTTL: Number(accessTtl), jwt: { sign: { alg: 'RS256' } } }),
    },
  },
  // a first-party viewer: no consent page, the grant covers the server's audience
  loadExistingGrant: async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid profile offline_access');
    grant.addResourceScope(audience, 'openid profile');
    await grant.save();
    return grant;
  },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  // OHIF makes a new oidc-client-ts UserManager each time its sign-in routes render, and each renews the token: two
  // renewals with one refresh token at once. Keycloak accepts that by default (its "revoke refresh token" is off);
  // oidc-provider's default rotation would take the second as a stolen token and end the session. As Keycloak, then.
  rotateRefreshToken: () => false,
  extraTokenClaims: (ctx, token) => {
    const name = String(token.accountId || token.clientId);
    const role = name.replace(/^(dr_|brats-)/, '');
    return { preferred_username: name, realm_access: { roles: ROLES.includes(role) ? [`monailabel-${role}`] : [] } };
  },
});

// The development login page accepts any password: refuse all but the test's, before the provider sees the form.
provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && /^\/interaction\/[^/]+\/submit$/.test(ctx.path) && ctx.is('application/x-www-form-urlencoded')) {
    let raw = '';
    for await (const chunk of ctx.req) raw += chunk;
    const form = new URLSearchParams(raw);
    if (form.get('prompt') === 'login' && form.get('password') !== PASSWORD) {
      ctx.status = 401;
      ctx.type = 'html';
      ctx.body = '<p id="refused">Wrong user name or password.</p>';
      return;
    }
    ctx.req.body = raw; // read once here: the provider takes a parsed body (its documented fallback)
  }
  await next();
});

// OHIF (oidc-client-ts) reads the userinfo endpoint after sign-in with its access token. Keycloak answers it for any
// access token it issued; oidc-provider refuses one issued for a resource server (the server's audience). Here it
// answers as Keycloak does: the subject of a valid access token (signature, issuer, expiry checked).
const publicKey = await importJWK({ ...privateKey.export({ format: 'jwk' }), d: undefined, p: undefined, q: undefined, dp: undefined, dq: undefined, qi: undefined }, 'RS256');
provider.use(async (ctx, next) => {
  if (ctx.path !== '/me') return next();
  const cors = { 'Access-Control-Allow-Origin': viewerOrigin, 'Access-Control-Allow-Headers': 'Authorization', 'Access-Control-Allow-Methods': 'GET, POST' };
  ctx.set(cors);
  if (ctx.method === 'OPTIONS') {
    ctx.status = 204;
    return;
  }
  try {
    const { payload } = await jwtVerify(String(ctx.get('authorization')).replace(/^Bearer /, ''), publicKey, { issuer });
    ctx.body = { sub: payload.sub, preferred_username: payload.preferred_username };
  } catch (e) {
    ctx.status = 401;
    ctx.body = { error: 'invalid_token', error_description: String(e.message) };
  }
});

for (const event of ['grant.error', 'server_error', 'authorization.error']) {
  provider.on(event, (ctx, error) => console.error(event, error.error_description || '', error.error_detail || error.message));
}

provider.listen(Number(port), '127.0.0.1', () => console.log(JSON.stringify({ issuer })));
