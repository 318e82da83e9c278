// A real OpenID Connect provider for the jwt tests: oidc-provider (the certified Node
// implementation) on a loopback port, with one client-credentials client that gets JWT
// access tokens.
//
//   node provider.mjs <port> <issuer> <keystore.json> <kid>[,<kid>...]
//
// The keystore file keeps the private keys by kid across restarts (a missing kid is made
// and added): the first kid signs, the others are published too. Rotation is a restart with
// another list. GET /__stats answers {"jwks": <requests to the JWKS endpoint so far>}.
// A token request may ask for a claim `plan` (a string, or a JSON array of strings) with a
// `plan` form field.
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const [port, issuer, keystore, kidList] = process.argv.slice(2);
const kids = kidList.split(',').filter(Boolean);
const stored = existsSync(keystore) ? JSON.parse(readFileSync(keystore, 'utf8')) : {};
for (const kid of kids) {
  if (!stored[kid]) {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    stored[kid] = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
  }
}
writeFileSync(keystore, JSON.stringify(stored));

let jwksRequests = 0;
const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'wasmgate-test',
      client_secret: 'wasmgate-test-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
    },
  ],
  jwks: { keys: kids.map((k) => stored[k]) },
  ttl: { ClientCredentials: 600 },
  cookies: { keys: ['wasmgate-test-cookie-key'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:wasmgate',
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api',
        audience: 'wasmgate',
        accessTokenTTL: 600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  extraTokenClaims: (ctx) => {
    const plan = ctx.oidc.body?.plan;
    if (!plan) return undefined;
    return { plan: plan.startsWith('[') ? JSON.parse(plan) : plan };
  },
});
provider.proxy = false;
provider.use(async (ctx, next) => {
  if (ctx.path === '/__stats') {
    ctx.body = { jwks: jwksRequests };
    return;
  }
  if (ctx.path === '/jwks') jwksRequests += 1;
  await next();
});
provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`listening on ${port} as ${issuer}, signing with ${kids[0]}`);
});
