import { randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import type { Config } from '../config.js';
import { describeError, GateError } from '../errors.js';
import type { Logger } from '../log.js';
import { Pipeline } from '../pipeline.js';
import { openedHandle } from './handle.js';
import { compactWhenQuiet } from './quiet-compaction.js';
import { createServer, SERVER_NAME } from './index.js';

/**
 * Streamable HTTP for agents on another machine (behind a proxy) or in other processes. Every
 * request must carry the bearer token; Host and Origin are checked against DNS rebinding; each MCP
 * session gets its own server object over one shared pipeline, so sessions see the same requests.
 * Sessions are bounded (http.max_sessions, the idlest one makes room) and expire when idle
 * (http.session_idle_seconds), so abandoned clients cannot grow memory without end.
 */

export interface HttpServerHandle {
  readonly url: string;
  /** MCP sessions open right now. */
  sessionCount(): number;
  close(): Promise<void>;
}

interface Session {
  readonly transport: StreamableHTTPServerTransport;
  readonly server: McpServer;
  /** performance.now() of the last request to arrive or finish. */
  lastActivity: number;
  /** POSTs whose response has not finished, and open GET streams: such a session is never closed. */
  inFlight: number;
}

/** Counts the request as in flight until its response closes (finished or aborted). */
function trackRequest(session: Session, res: ServerResponse): void {
  session.inFlight += 1;
  session.lastActivity = performance.now();
  res.on('close', () => {
    session.inFlight -= 1;
    session.lastActivity = performance.now();
  });
}

const MAX_BODY_BYTES = 1024 * 1024;
/** How much of a body over the limit is read (and dropped) before the connection is cut. */
const MAX_DRAINED_BYTES = 16 * MAX_BODY_BYTES;

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

/** A body that is not JSON is the client's error (400), one over the limit too (413); the rest are ours. */
function httpStatusOf(error: unknown): number {
  if (error instanceof SyntaxError) return 400;
  if (error instanceof GateError && error.code === 'HTTP_BODY_TOO_LARGE') return 413;
  return 500;
}

/**
 * Reads a JSON body of at most 1 MiB. A larger one is read to its end and dropped, so that the client
 * can read the 413 (a connection closed under its upload is all it would see otherwise), unless it
 * goes on far past the limit: then the connection is cut.
 */
async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_DRAINED_BYTES) break;
    if (size <= MAX_BODY_BYTES) chunks.push(chunk as Buffer);
  }
  if (size > MAX_BODY_BYTES)
    throw new GateError('HTTP_BODY_TOO_LARGE', 'The request body is larger than 1 MiB.');
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
  const pipeline = await Pipeline.open(config, { log, serverName: SERVER_NAME, transport: 'http' });
  const stopCompaction = compactWhenQuiet((listener) => pipeline.onChange(listener));
  const handle = openedHandle(pipeline);
  const sessions = new Map<string, Session>();
  /** Initializes under way: not in `sessions` yet, but they count against max_sessions. */
  let initializing = 0;
  const maxSessions = config.http.max_sessions;
  const idleMs = config.http.session_idle_seconds * 1000;
  let allowedHosts: string[] = [];

  /** Out of the map synchronously (so it stops counting and answers 404), then closed. */
  async function closeSession(id: string, session: Session, reason: 'idle' | 'evicted' | 'shutdown') {
    if (sessions.get(id) !== session) return;
    sessions.delete(id);
    if (reason !== 'shutdown') log.info({ session: id, reason }, 'HTTP MCP session closed');
    await session.transport.close().catch(() => undefined);
    await session.server.close().catch(() => undefined);
  }

  /** The session idle longest with nothing in flight, if any. */
  function idlestSession(): [string, Session] | undefined {
    let idlest: [string, Session] | undefined;
    for (const entry of sessions) {
      if (entry[1].inFlight === 0 && (!idlest || entry[1].lastActivity < idlest[1].lastActivity))
        idlest = entry;
    }
    return idlest;
  }

  async function closeIdleSessions(): Promise<void> {
    const now = performance.now();
    const expired = [...sessions].filter(([, s]) => s.inFlight === 0 && now - s.lastActivity > idleMs);
    await Promise.all(expired.map(([id, session]) => closeSession(id, session, 'idle')));
  }

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
      const sessionId = req.headers['mcp-session-id'];
      const existing = typeof sessionId === 'string' ? sessions.get(sessionId) : undefined;
      // Tracked before the body is read, so a slow upload cannot be evicted under it.
      if (existing) trackRequest(existing, res);
      const body = req.method === 'POST' ? await readJson(req) : undefined;
      if (existing) return await existing.transport.handleRequest(req, res, body);
      if (sessionId !== undefined)
        return reply(res, 404, 'Unknown or expired MCP session; initialize a new one.');
      if (req.method !== 'POST' || !isInitializeRequest(body)) {
        return reply(res, 400, 'No MCP session: the first request must be initialize.');
      }
      // Check, choose the session to evict and reserve the slot without awaiting in between, so a
      // burst of parallel initializes cannot exceed max_sessions.
      const full = sessions.size + initializing >= maxSessions;
      const evict = full ? idlestSession() : undefined;
      if (full && !evict) {
        const message = `Too many MCP sessions are busy (max_sessions ${maxSessions}); retry shortly.`;
        return reply(res, 503, message, { 'retry-after': '5' });
      }
      // closeSession drops it from the map before its first await; the closing is awaited below.
      const evicting = evict ? closeSession(evict[0], evict[1], 'evicted') : undefined;
      initializing += 1;
      let reserved = true;
      const release = () => {
        if (reserved) initializing -= 1;
        reserved = false;
      };
      const transport: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        onsessioninitialized: (id) => {
          release();
          sessions.set(id, session);
          log.info({ session: id }, 'HTTP MCP session opened');
        },
        enableDnsRebindingProtection: true,
        allowedHosts,
        ...(config.http.allowed_origins.length > 0 ? { allowedOrigins: config.http.allowed_origins } : {}),
      });
      const session: Session = { transport, server: createServer(handle), lastActivity: 0, inFlight: 0 };
      transport.onclose = () => {
        if (transport.sessionId && sessions.get(transport.sessionId) === session)
          sessions.delete(transport.sessionId);
      };
      trackRequest(session, res);
      try {
        await evicting;
        await session.server.connect(transport);
        await transport.handleRequest(req, res, body);
      } finally {
        if (reserved) {
          // The initialize never produced a session: give back its slot and its server.
          release();
          await session.server.close().catch(() => undefined);
        }
      }
    })().catch((error: unknown) => {
      const status = httpStatusOf(error);
      if (status < 500) log.warn({ err: describeError(error), status }, 'HTTP request refused');
      else log.error({ err: describeError(error) }, 'HTTP request failed');
      if (!res.headersSent) reply(res, status, error instanceof Error ? error.message : 'Internal error');
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
  // A quarter of the idle time, so a session outlives it by at most 25%; at least every 30 s.
  const sweeper = setInterval(
    () => {
      closeIdleSessions().catch((error: unknown) =>
        log.error({ err: describeError(error) }, 'closing idle HTTP sessions failed'),
      );
    },
    Math.min(idleMs / 4, 30_000),
  );
  sweeper.unref();

  return {
    url,
    sessionCount: () => sessions.size,
    async close() {
      clearInterval(sweeper);
      await Promise.all([...sessions].map(([id, session]) => closeSession(id, session, 'shutdown')));
      await new Promise<void>((resolve) => httpServer.close(() => resolve()));
      httpServer.closeAllConnections();
      stopCompaction();
      await pipeline.close();
    },
  };
}
