// A real OpenID provider on loopback for the end-to-end tests:
// oidc-provider (github.com/panva/node-oidc-provider, OpenID Certified),
// configured as an organisation would configure its own for agents —
// machine clients with the client-credentials grant, and the gateway as a
// resource server (RFC 8707) whose access tokens are JWTs (RFC 9068)
// signed with ES256, for the resource as their audience.
//
//   node op.mjs <resource> <clients> [opaque]
//
// <clients> is a JSON list of [client id, secret]. With "opaque", the
// access tokens are opaque instead, for the resource server to introspect
// (RFC 7662) as the client "agentsec-gateway" (secret
// "introspection-secret"); clients may revoke their tokens (RFC 7009).
// It listens on a port of 127.0.0.1 the system chooses and prints
// "issuer <url>" once it serves.
import { generateKeyPairSync } from "node:crypto";
import http from "node:http";
import Provider from "oidc-provider";

const [resource, clientsJSON, format = "jwt"] = process.argv.slice(2);
const clients = [...JSON.parse(clientsJSON), ["agentsec-gateway", "introspection-secret"]].map(([id, secret]) => ({
  client_id: id,
  client_secret: secret,
  grant_types: ["client_credentials"],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: "client_secret_basic",
  id_token_signed_response_alg: "ES256",
}));
const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
const key = { ...privateKey.export({ format: "jwk" }), kid: "op-es256-1", alg: "ES256", use: "sig" };

const server = http.createServer();
server.listen(0, "127.0.0.1", () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: [key] },
    scopes: ["mcp:tools"],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => resource,
        getResourceServerInfo: (_ctx, indicator) => {
          if (indicator !== resource) {
            throw new Error(`unknown resource ${indicator}`);
          }
          if (format === "opaque") {
            return { scope: "mcp:tools", audience: resource, accessTokenFormat: "opaque", accessTokenTTL: 300 };
          }
          return { scope: "mcp:tools", audience: resource, accessTokenFormat: "jwt", accessTokenTTL: 300, jwt: { sign: { alg: "ES256" } } };
        },
      },
    },
  });
  server.on("request", provider.callback());
  console.log(`issuer ${issuer}`);
});
