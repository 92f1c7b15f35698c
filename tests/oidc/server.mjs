// A real OpenID Connect / OAuth 2.0 provider for Sentinel's revocation tests (npm oidc-provider).
//
//   node server.mjs PORT CLIENTS_JSON
//
// CLIENTS_JSON is a JSON array of client metadata (client_id, client_secret,
// token_endpoint_auth_method). Each client may mint tokens with the client_credentials grant,
// revoke them (RFC 7009) and introspect them (RFC 7662). Binds 127.0.0.1 only, prints
// "listening on <issuer>" once ready, and exits when its standard input closes (so it never
// outlives the test run that started it).
import http from 'node:http';
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const clients = JSON.parse(process.argv[3]).map((client) => ({
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  ...client,
}));
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients,
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    devInteractions: { enabled: false },
  },
  // Opaque client-credentials tokens, kept in the provider's in-memory store.
  ttl: { ClientCredentials: 3600 },
});

const server = http.createServer(provider.callback());
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening on ${issuer}\n`);
});
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));
