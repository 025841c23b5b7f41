import { randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import type { Config } from '../config.js';
import { GateError } from '../errors.js';
import type { Logger } from '../log.js';
import { Pipeline } from '../pipeline.js';
import { createServer, SERVER_NAME } from './index.js';

/**
 * Streamable HTTP for agents on another machine (behind a proxy) or in other processes. Every
 * request must carry the bearer token; Host and Origin are checked against DNS rebinding; each MCP
 * session gets its own server object over one shared pipeline, so sessions see the same requests.
 */

export interface HttpServerHandle {
  readonly url: string;
  close(): Promise<void>;
}

const MAX_BODY_BYTES = 1024 * 1024;

function reply(
  res: ServerResponse,
  status: number,
  message: string,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32000, message }, id: null }));
}

function tokenMatches(header: string | undefined, token: string): boolean {
  const presented = /^Bearer (.+)$/.exec(header ?? '')?.[1] ?? '';
  const a = Buffer.from(presented);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES)
      throw new GateError('HTTP_BODY_TOO_LARGE', 'The request body is larger than 1 MiB.');
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  return text === '' ? undefined : (JSON.parse(text) as unknown);
}

export async function serveHttp(
  config: Config,
  log: Logger,
  overrides: { host?: string; port?: number } = {},
): Promise<HttpServerHandle> {
  const token = process.env[config.http.token_env];
  if (!token || token.length < 16) {
    throw new GateError(
      'HTTP_TOKEN_MISSING',
      `Set ${config.http.token_env} to a bearer token of at least 16 characters; the HTTP transport never runs unauthenticated.`,
    );
  }
  const host = overrides.host ?? config.http.host;
  const pipeline = await Pipeline.open(config, { log, serverName: SERVER_NAME });
  const sessions = new Map<string, StreamableHTTPServerTransport>();
  let allowedHosts: string[] = [];

  const httpServer = createHttpServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://placeholder');
      if (url.pathname !== '/mcp') return reply(res, 404, 'Not found: the MCP endpoint is /mcp.');
      if (!allowedHosts.includes(req.headers.host ?? '')) {
        return reply(res, 403, `Host ${req.headers.host ?? '(none)'} is not allowed.`);
      }
      const origin = req.headers.origin;
      if (origin !== undefined && !config.http.allowed_origins.includes(origin)) {
        return reply(res, 403, `Origin ${origin} is not allowed.`);
      }
      if (!tokenMatches(req.headers.authorization, token)) {
        log.warn({ remote: req.socket.remoteAddress }, 'HTTP request without a valid bearer token refused');
        return reply(res, 401, 'A valid bearer token is required.', { 'www-authenticate': 'Bearer' });
      }
      const body = req.method === 'POST' ? await readJson(req) : undefined;
      const sessionId = req.headers['mcp-session-id'];
      let transport = typeof sessionId === 'string' ? sessions.get(sessionId) : undefined;
      if (!transport) {
        if (sessionId !== undefined)
          return reply(res, 404, 'Unknown or expired MCP session; initialize a new one.');
        if (req.method !== 'POST' || !isInitializeRequest(body)) {
          return reply(res, 400, 'No MCP session: the first request must be initialize.');
        }
        const fresh: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
          sessionIdGenerator: () => randomUUID(),
          onsessioninitialized: (id) => {
            sessions.set(id, fresh);
            log.info({ session: id }, 'HTTP MCP session opened');
          },
          enableDnsRebindingProtection: true,
          allowedHosts,
          ...(config.http.allowed_origins.length > 0 ? { allowedOrigins: config.http.allowed_origins } : {}),
        });
        fresh.onclose = () => {
          if (fresh.sessionId) sessions.delete(fresh.sessionId);
        };
        await createServer(pipeline).connect(fresh);
        transport = fresh;
      }
      await transport.handleRequest(req, res, body);
    })().catch((error: unknown) => {
      log.error({ err: error instanceof Error ? error.message : String(error) }, 'HTTP request failed');
      if (!res.headersSent)
        reply(
          res,
          error instanceof SyntaxError ? 400 : 500,
          error instanceof Error ? error.message : 'Internal error',
        );
    });
  });

  await new Promise<void>((resolve, reject) => {
    httpServer.once('error', reject);
    httpServer.listen(overrides.port ?? config.http.port, host, () => resolve());
  });
  const { port } = httpServer.address() as AddressInfo;
  allowedHosts = [`${host}:${port}`, `localhost:${port}`, `127.0.0.1:${port}`, `[::1]:${port}`];
  const url = `http://${host}:${port}/mcp`;
  log.info({ url }, 'approval gate listening on Streamable HTTP');
  return {
    url,
    async close() {
      for (const transport of sessions.values()) await transport.close().catch(() => undefined);
      await new Promise<void>((resolve) => httpServer.close(() => resolve()));
      httpServer.closeAllConnections();
      await pipeline.close();
    },
  };
}
