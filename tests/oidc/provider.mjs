// A real OpenID provider for the tests: panva's oidc-provider (OpenID Certified), issuing JWT access tokens
// by the client-credentials grant. One client per MONAI Label role: client "brats-<role>" gets a token for
// user "brats-<role>" holding role "monailabel-<role>" (Keycloak's realm_access.roles claim), for the
// audience the server expects. Keys are made at start. Prints one JSON line when it listens.
//   node provider.mjs PORT AUDIENCE
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, audience] = process.argv.slice(2);
const ROLES = ['user', 'annotator', 'reviewer', 'admin'];
const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'brats-test-key', use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  jwks: { keys: [jwk] },
  clients: ROLES.map((role) => ({
    client_id: `brats-${role}`,
    client_secret: `secret-${role}`,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
  })),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({ audience, scope: 'openid', accessTokenFormat: 'jwt', accessTokenTTL: 600, jwt: { sign: { alg: 'RS256' } } }),
    },
  },
  extraTokenClaims: (ctx, token) => {
    const role = String(token.clientId).replace('brats-', '');
    return { preferred_username: token.clientId, realm_access: { roles: [`monailabel-${role}`] } };
  },
});
provider.listen(Number(port), '127.0.0.1', () => console.log(JSON.stringify({ issuer })));
