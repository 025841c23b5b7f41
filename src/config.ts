import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { describeError, GateError } from './errors.js';
import { RISK_CODES } from './migration/risk-codes.js';
import { isValidTimeZone } from './time.js';

export const PRIORITIES = ['critical', 'high', 'medium', 'low'] as const;
export const Priority = z.enum(PRIORITIES);
export type Priority = z.infer<typeof Priority>;

const identifier = z
  .string()
  .regex(/^[a-z_][a-z0-9_]{0,62}$/, 'must be a lower-case SQL identifier (letters, digits, underscore)');

const PgDatabase = z
  .object({
    client: z.literal('pg'),
    connection_env: z
      .string()
      .regex(
        /^[A-Za-z_][A-Za-z0-9_]*$/,
        'must be the NAME of an environment variable, not a connection string',
      )
      .describe(
        'Name of the environment variable holding the connection string. The string itself never goes in config.',
      ),
  })
  .strict();

const PgliteDatabase = z
  .object({
    client: z.literal('pglite'),
    path: z
      .string()
      .min(1)
      .describe('Data directory of the embedded database, relative to this config file, or "memory://".'),
  })
  .strict();

export const DatabaseConfig = z.discriminatedUnion('client', [PgDatabase, PgliteDatabase]);
export type DatabaseConfig = z.infer<typeof DatabaseConfig>;

const EnvironmentConfig = z
  .object({
    databases: z
      .array(z.string().min(1))
      .min(1)
      .describe(
        'Logical database names this environment may target. Each database belongs to one environment: the agent ' +
          "names the environment, so a database in two would let it pick the weaker one's policy.",
      ),
    approvers: z
      .array(z.string().min(1))
      .min(1)
      .optional()
      .describe(
        'If set, only these people (decided_by, case-insensitive) may decide requests for this environment.',
      ),
    require_approval: z
      .enum(['always', 'not_for_dry_runs', 'never'])
      .default('always')
      .describe(
        'always: every request waits for a human. not_for_dry_runs: dry runs run at once. never: everything runs at once ' +
          '(still written, audited and executed once). Environments named like "production" accept only always.',
      ),
    risk_policy: z
      .partialRecord(z.enum(RISK_CODES), z.enum(['allow', 'refuse', 'two_approvers']))
      .default({})
      .describe('Per risk finding: refuse the request outright, or require two different approvers.'),
    allowed_signers: z
      .string()
      .min(1)
      .optional()
      .describe(
        "OpenSSH allowed_signers file (relative to this config file), as git's gpg.ssh.allowedSignersFile: " +
          'decisions here count only with an SSH signature (namespace approval-gate) by a key listed for the ' +
          'principal in decided_by. The file and the config must not be writable by the agent.',
      ),
    revoked_keys: z
      .string()
      .min(1)
      .optional()
      .describe(
        'With allowed_signers: keys no longer trusted (ssh-keygen -Y verify -r): public keys or a KRL.',
      ),
    require_user_presence: z
      .boolean()
      .default(false)
      .describe(
        'With allowed_signers: refuse FIDO (sk-) signatures made without a touch, so an agent driving a loaded ' +
          'ssh-agent cannot sign silently.',
      ),
    approve_in_client: z
      .boolean()
      .default(false)
      .describe(
        'Ask for the decision in the MCP client itself (elicitation) when the client can show a form: Approve, ' +
          'Reject with a reason, or Decide in the file. The answer comes from whoever drives the client, so it is a ' +
          'convenience for low-risk targets, not an authenticated decision: refused for production-like names, with ' +
          'allowed_signers, and with an approvers list under require_approval: always. Turn it on only where the ' +
          'client shows its forms to a person, never where the agent itself answers them.',
      ),
  })
  .strict();

const minutes = z
  .number()
  .positive()
  .max(7 * 24 * 60);

export const ConfigSchema = z
  .object({
    $schema: z.string().optional(),
    approvals_dir: z
      .string()
      .min(1)
      .default('approvals')
      .describe('Directory of the Markdown approval files humans edit, relative to this config file.'),
    state_dir: z
      .string()
      .min(1)
      .default('.approval-gate')
      .describe(
        "Directory of the server's own canonical records and decisions (mode 0700). Not for humans to edit.",
      ),
    migrations_dir: z
      .string()
      .min(1)
      .default('.')
      .describe('migration_file paths must lie inside this directory (relative to this config file).'),
    timezone: z
      .string()
      .refine(isValidTimeZone, 'must be an IANA time zone such as "Europe/Berlin"')
      .nullable()
      .default(null)
      .describe(
        "Zone for writing times and reading naive ones (2026-02-13T09:00:00); null: the server's own.",
      ),
    requested_by: z
      .string()
      .min(1)
      .default('agent')
      .describe('Identity written as requested_by; this identity may never approve its own request.'),
    local_user: z
      .string()
      .min(1)
      .optional()
      .describe(
        'The name decisions made in the MCP client (approve_in_client) are recorded under as decided_by; ' +
          'default: the operating-system user running the server.',
      ),
    ledger_schema: identifier
      .default('approval_gate')
      .describe("Postgres schema of the gate's own tables (ledger) on each target database."),
    databases: z.record(z.string().min(1), DatabaseConfig),
    environments: z.record(z.string().min(1), EnvironmentConfig),
    expiry_minutes: z
      .object({
        critical: minutes.default(15),
        high: minutes.default(60),
        medium: minutes.default(240),
        low: minutes.default(1440),
      })
      .strict()
      .default({ critical: 15, high: 60, medium: 240, low: 1440 })
      .describe('Minutes a request waits for a human before it expires, per priority.'),
    wait: z
      .object({
        max_wait_seconds: z.number().positive().max(3600).default(50),
        progress_interval_seconds: z.number().positive().max(60).default(5),
      })
      .strict()
      .default({ max_wait_seconds: 50, progress_interval_seconds: 5 })
      .describe(
        'How long one tool call waits for a decision before returning PENDING (clients cancel at ~60 s).',
      ),
    gate: z
      .object({
        recheck_interval_ms: z.number().int().min(100).max(600_000).default(5000),
        watch_files: z
          .boolean()
          .default(true)
          .describe(
            'false: rely on the periodic re-check only (for network file systems that deliver no events).',
          ),
      })
      .strict()
      .default({ recheck_interval_ms: 5000, watch_files: true })
      .describe('Safety-net re-read of pending files; file-system events are the fast path.'),
    notify: z
      .object({
        webhook: z
          .object({
            url: z
              .string()
              .url()
              .describe(
                'Receives a POST for every new pending request. Never logged (it may hold a secret).',
              ),
            format: z
              .enum(['json', 'slack'])
              .default('json')
              .describe('slack: a {"text": …} payload for Slack incoming webhooks.'),
            retries: z.number().int().min(0).max(10).default(3),
            timeout_ms: z.number().int().min(100).max(60_000).default(5000),
          })
          .strict()
          .optional(),
        terminal_bell: z
          .boolean()
          .default(false)
          .describe('Ring the terminal bell (on stderr) for every new pending request.'),
      })
      .strict()
      .default({ terminal_bell: false })
      .describe(
        'Tell humans that a request waits for them. Failures are logged and retried, never block the request.',
      ),
    http: z
      .object({
        host: z
          .string()
          .min(1)
          .default('127.0.0.1')
          .describe('Interface to bind; keep 127.0.0.1 unless behind a proxy.'),
        port: z.number().int().min(0).max(65_535).default(8808),
        token_env: z
          .string()
          .regex(/^[A-Za-z_][A-Za-z0-9_]*$/)
          .default('APPROVAL_GATE_TOKEN')
          .describe(
            'Environment variable holding the bearer token clients must send; the server refuses to start without it.',
          ),
        allowed_origins: z
          .array(z.string().url())
          .default([])
          .describe(
            'Browser origins allowed to call the server; requests with any other Origin are refused (DNS rebinding).',
          ),
        max_sessions: z
          .number()
          .int()
          .min(1)
          .max(10_000)
          .default(100)
          .describe(
            'Most MCP sessions open at once; when full, the session idle longest is closed to make room (never one with a request in progress).',
          ),
        session_idle_seconds: z
          .number()
          .positive()
          .max(86_400)
          .default(1800)
          .describe('A session with no request for this long is closed; its client must initialize again.'),
      })
      .strict()
      .default({
        host: '127.0.0.1',
        port: 8808,
        token_env: 'APPROVAL_GATE_TOKEN',
        allowed_origins: [],
        max_sessions: 100,
        session_idle_seconds: 1800,
      })
      .describe('Streamable HTTP transport (approval-gate serve --http).'),
    executor: z
      .object({
        lock_timeout_ms: z
          .number()
          .int()
          .min(1)
          .max(600_000)
          .default(2000)
          .describe(
            'How long a statement may wait for a lock before giving up (then the transaction is retried).',
          ),
        statement_timeout_ms: z.number().int().min(1).max(86_400_000).default(600_000),
        lock_retries: z
          .number()
          .int()
          .min(0)
          .max(20)
          .default(5)
          .describe(
            'Retries of a transactional migration that timed out on a lock or deadlocked; 0: no retry.',
          ),
        retry_delay_ms: z
          .number()
          .int()
          .min(0)
          .max(60_000)
          .default(500)
          .describe('First backoff before a retry; it doubles (with jitter) up to max_retry_delay_ms.'),
        max_retry_delay_ms: z.number().int().min(0).max(600_000).default(10_000),
      })
      .strict()
      .default({
        lock_timeout_ms: 2000,
        statement_timeout_ms: 600_000,
        lock_retries: 5,
        retry_delay_ms: 500,
        max_retry_delay_ms: 10_000,
      }),
  })
  .strict();

export type ConfigInput = z.input<typeof ConfigSchema>;
export type ParsedConfig = z.infer<typeof ConfigSchema>;
export type EnvironmentConfig = z.infer<typeof EnvironmentConfig>;

/** The parsed config with every path made absolute against the config file's directory. */
export interface Config extends ParsedConfig {
  readonly configPath: string | null;
  /** The config file's directory: relative paths, including migration_file, are resolved from here. */
  readonly baseDir: string;
  readonly approvalsDir: string;
  readonly stateDir: string;
  readonly migrationsDir: string;
}

export function formatIssues(issues: readonly z.core.$ZodIssue[]): string {
  return issues
    .map((issue) => {
      const where = issue.path.length > 0 ? issue.path.join('.') : '(top level)';
      return `  - ${where}: ${issue.message}`;
    })
    .join('\n');
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * A signed environment takes decisions only from signatures: a policy that approves on its own would
 * bypass them, and the signing options mean nothing without the file.
 */
function signingIssues(input: unknown): string[] {
  if (!isRecord(input) || !isRecord(input.environments)) return [];
  const issues: string[] = [];
  for (const [name, environment] of Object.entries(input.environments)) {
    if (!isRecord(environment)) continue;
    if (environment.allowed_signers === undefined) {
      for (const key of ['revoked_keys', 'require_user_presence'] as const) {
        if (environment[key] !== undefined)
          issues.push(`  - environments.${name}.${key}: only means something with allowed_signers`);
      }
    } else if (environment.require_approval !== undefined && environment.require_approval !== 'always') {
      issues.push(
        `  - environments.${name}.require_approval: "${name}" takes signed decisions only (allowed_signers); only "always" is accepted`,
      );
    }
  }
  return issues;
}

/**
 * An answer in the MCP client comes from whoever drives the client: never where decisions must be
 * signed, nor where only listed approvers may decide.
 */
function inClientIssues(input: unknown): string[] {
  if (!isRecord(input) || !isRecord(input.environments)) return [];
  const issues: string[] = [];
  const localUser = typeof input.local_user === 'string' ? input.local_user : null;
  const agent = typeof input.agent_identity === 'string' ? input.agent_identity : 'agent';
  if (localUser !== null && localUser.toLowerCase() === agent.toLowerCase()) {
    issues.push(
      `  - local_user: "${localUser}" is the agent's identity (agent_identity); the requester may never decide`,
    );
  }
  for (const [name, environment] of Object.entries(input.environments)) {
    if (!isRecord(environment) || environment.approve_in_client !== true) continue;
    const approvers = Array.isArray(environment.approvers) ? environment.approvers : null;
    if (/prod/i.test(name)) {
      issues.push(
        `  - environments.${name}.approve_in_client: "${name}" is a production environment; its decisions are made in the file`,
      );
    } else if (environment.allowed_signers !== undefined) {
      issues.push(
        `  - environments.${name}.approve_in_client: "${name}" takes signed decisions only (allowed_signers); an answer in the MCP client is not one`,
      );
    } else if (approvers && (environment.require_approval ?? 'always') === 'always') {
      issues.push(
        `  - environments.${name}.approve_in_client: "${name}" lists its approvers; an answer in the MCP client comes from whoever drives the client`,
      );
    } else if (
      approvers &&
      localUser !== null &&
      !approvers.some((a) => typeof a === 'string' && a.toLowerCase() === localUser.toLowerCase())
    ) {
      issues.push(
        `  - environments.${name}.approve_in_client: local_user "${localUser}" is not among the approvers of "${name}", so no answer in the client could count`,
      );
    }
  }
  return issues;
}

/** Production-like environments may never skip approval. */
function productionIssues(input: unknown): string[] {
  if (!isRecord(input) || !isRecord(input.environments)) return [];
  return Object.entries(input.environments)
    .filter(
      ([name, environment]) =>
        /prod/i.test(name) &&
        isRecord(environment) &&
        environment.require_approval !== undefined &&
        environment.require_approval !== 'always',
    )
    .map(
      ([name]) =>
        `  - environments.${name}.require_approval: "${name}" is a production environment; only "always" is accepted`,
    );
}

/**
 * Environments must name defined databases. Checked on the raw input, so that it is reported together
 * with every other problem rather than only after they are fixed.
 */
function crossReferenceIssues(input: unknown): string[] {
  if (!isRecord(input) || !isRecord(input.environments)) return [];
  const defined = isRecord(input.databases) ? Object.keys(input.databases) : [];
  const issues: string[] = [];
  for (const [name, environment] of Object.entries(input.environments)) {
    if (!isRecord(environment) || !Array.isArray(environment.databases)) continue;
    for (const database of environment.databases) {
      if (typeof database === 'string' && !defined.includes(database)) {
        issues.push(
          `  - environments.${name}.databases: names database "${database}", which is not defined under databases`,
        );
      }
    }
  }
  return issues;
}

/**
 * Each database belongs to exactly one environment, under one name. The agent names the environment
 * of its request: a database listed by two environments, or one database under two names (the same
 * connection variable, the same embedded data directory) listed by two, would let it pick the weaker
 * environment's policy (no signatures, no approvers list, an auto-approval, a risk finding allowed)
 * for the other's database, and the file would show the weaker environment's name to the reviewer.
 */
function databaseOwnershipIssues(input: unknown, baseDir: string): string[] {
  if (!isRecord(input) || !isRecord(input.environments)) return [];
  const issues: string[] = [];
  const owners = new Map<string, string[]>();
  for (const [name, environment] of Object.entries(input.environments)) {
    if (!isRecord(environment) || !Array.isArray(environment.databases)) continue;
    for (const database of new Set(environment.databases)) {
      if (typeof database === 'string') owners.set(database, [...(owners.get(database) ?? []), name]);
    }
  }
  for (const [database, environments] of owners) {
    if (environments.length < 2) continue;
    issues.push(
      `  - environments: database "${database}" is listed by ${environments.map((e) => `"${e}"`).join(' and ')}; ` +
        'list each database in one environment (the agent chooses the environment, and with it the policy)',
    );
  }
  if (!isRecord(input.databases)) return issues;
  const byTarget = new Map<string, string[]>();
  for (const [name, database] of Object.entries(input.databases)) {
    if (!isRecord(database)) continue;
    const target =
      database.client === 'pg' && typeof database.connection_env === 'string'
        ? `the connection variable ${database.connection_env}`
        : database.client === 'pglite' && typeof database.path === 'string' && database.path !== 'memory://'
          ? `the data directory ${path.resolve(baseDir, database.path)}`
          : null;
    if (target !== null) byTarget.set(target, [...(byTarget.get(target) ?? []), name]);
  }
  for (const [target, names] of byTarget) {
    if (names.length < 2) continue;
    issues.push(
      `  - databases: ${names.map((n) => `"${n}"`).join(' and ')} are one database (${target}); give each database one name`,
    );
  }
  return issues;
}

/** Validates an already-read config object. `baseDir` anchors relative paths. */
export function parseConfig(input: unknown, baseDir: string, configPath: string | null = null): Config {
  const result = ConfigSchema.safeParse(input);
  const crossIssues = [
    ...crossReferenceIssues(input),
    ...productionIssues(input),
    ...signingIssues(input),
    ...inClientIssues(input),
    ...databaseOwnershipIssues(input, baseDir),
  ];
  if (!result.success || crossIssues.length > 0) {
    const listed = [...(result.success ? [] : [formatIssues(result.error.issues)]), ...crossIssues].join(
      '\n',
    );
    throw new GateError(
      'CONFIG_INVALID',
      `The config${configPath ? ` at ${configPath}` : ''} is not valid:\n${listed}`,
    );
  }
  const parsed = result.data;
  const databases: Record<string, DatabaseConfig> = {};
  for (const [name, database] of Object.entries(parsed.databases)) {
    databases[name] =
      database.client === 'pglite' && database.path !== 'memory://'
        ? { ...database, path: path.resolve(baseDir, database.path) }
        : database;
  }
  const environments: typeof parsed.environments = {};
  for (const [name, environment] of Object.entries(parsed.environments)) {
    environments[name] = {
      ...environment,
      ...(environment.allowed_signers !== undefined
        ? { allowed_signers: path.resolve(baseDir, environment.allowed_signers) }
        : {}),
      ...(environment.revoked_keys !== undefined
        ? { revoked_keys: path.resolve(baseDir, environment.revoked_keys) }
        : {}),
    };
  }
  return {
    ...parsed,
    environments,
    databases,
    configPath,
    baseDir: path.resolve(baseDir),
    approvalsDir: path.resolve(baseDir, parsed.approvals_dir),
    stateDir: path.resolve(baseDir, parsed.state_dir),
    migrationsDir: path.resolve(baseDir, parsed.migrations_dir),
  };
}

/** Says where the config was looked for and the commands that create it from the shipped example. */
function missingConfigMessage(absolute: string): string {
  const here = fileURLToPath(import.meta.url);
  // src/config.ts through tsx, dist/src/config.js when built.
  const projectRoot = path.resolve(path.dirname(here), here.endsWith('.ts') ? '..' : '../..');
  const example = path.join(projectRoot, 'examples', 'approval-gate.yaml');
  const quote = (p: string) => (/^[\w@%+=:,./-]+$/.test(p) ? p : `'${p.replaceAll("'", `'\\''`)}'`);
  return (
    `No config at ${absolute}. Create one from the example: ` +
    `mkdir -p ${quote(path.dirname(absolute))} && cp ${quote(example)} ${quote(absolute)}, ` +
    'then edit its databases and environments; or pass --config <path> / set APPROVAL_GATE_CONFIG.'
  );
}

/** Reads and validates a YAML (or JSON) config file; every problem is reported in one message. */
export function loadConfig(configPath: string): Config {
  const absolute = path.resolve(configPath);
  let text: string;
  try {
    text = readFileSync(absolute, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new GateError('CONFIG_UNREADABLE', missingConfigMessage(absolute), { cause: error });
    }
    throw new GateError('CONFIG_UNREADABLE', `Cannot read the config file ${absolute}.`, { cause: error });
  }
  let data: unknown;
  try {
    data = parseYaml(text, { schema: 'core', uniqueKeys: true, prettyErrors: true });
  } catch (error) {
    throw new GateError(
      'CONFIG_INVALID',
      `The config at ${absolute} is not valid YAML: ${describeError(error)}`,
    );
  }
  return parseConfig(data, path.dirname(absolute), absolute);
}
