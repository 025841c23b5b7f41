import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../src/config.js';
import { GateError } from '../src/errors.js';

const minimal = {
  databases: { main_db: { client: 'pg', connection_env: 'MAIN_DB_URL' } },
  environments: { production: { databases: ['main_db'] } },
};

function configError(input: unknown): GateError {
  try {
    parseConfig(input, '/base');
  } catch (error) {
    if (error instanceof GateError) return error;
    throw error;
  }
  throw new Error('expected the config to be refused');
}

describe('config', () => {
  it('fills defaults and resolves paths against the config directory', () => {
    const config = parseConfig(minimal, '/srv/gate');
    expect(config.approvalsDir).toBe('/srv/gate/approvals');
    expect(config.stateDir).toBe('/srv/gate/.approval-gate');
    expect(config.expiry_minutes.critical).toBe(15);
    expect(config.wait.max_wait_seconds).toBe(50);
  });

  it('lists every problem in one message: unknown keys, undefined databases, wrong types', () => {
    const error = configError({
      ...minimal,
      approvals_directory: 'typo',
      environments: { production: { databases: ['main_db', 'ghost_db'] } },
      wait: { max_wait_seconds: 'fifty' },
    });
    expect(error.code).toBe('CONFIG_INVALID');
    expect(error.message).toContain('approvals_directory');
    expect(error.message).toContain('ghost_db');
    expect(error.message).toContain('wait.max_wait_seconds');
  });

  it('refuses a connection string where the name of an environment variable belongs', () => {
    const error = configError({
      ...minimal,
      databases: { main_db: { client: 'pg', connection_env: 'postgres://u:secret@db/prod' } },
    });
    expect(error.message).toContain('NAME of an environment variable');
  });

  it('refuses a production environment that would run without approval', () => {
    const error = configError({
      ...minimal,
      environments: { production: { databases: ['main_db'], require_approval: 'never' } },
    });
    expect(error.message).toContain('only "always" is accepted');
  });

  it('allows decisions in the MCP client only where an unauthenticated answer could count', () => {
    const dev = (settings: Record<string, unknown>, top: Record<string, unknown> = {}) => ({
      ...minimal,
      ...top,
      environments: { dev: { databases: ['main_db'], approve_in_client: true, ...settings } },
    });
    expect(parseConfig(dev({}), '/base').environments.dev?.approve_in_client).toBe(true);
    expect(parseConfig(minimal, '/base').environments.production?.approve_in_client).toBe(false);
    expect(configError(dev({ allowed_signers: 'signers' })).message).toContain('takes signed decisions only');
    expect(configError(dev({ approvers: ['Dana Reyes'] })).message).toContain('lists its approvers');
    // Approvers who decide only real runs: the local user must be one of them.
    const someApprovers = { approvers: ['Dana Reyes'], require_approval: 'not_for_dry_runs' };
    expect(parseConfig(dev(someApprovers, { local_user: 'dana reyes' }), '/base').local_user).toBe(
      'dana reyes',
    );
    expect(configError(dev(someApprovers, { local_user: 'Lee Park' })).message).toContain(
      'not among the approvers',
    );
    expect(configError(dev({}, { local_user: 'Agent' })).message).toContain("the agent's identity");
    const production = {
      ...minimal,
      environments: { production: { databases: ['main_db'], approve_in_client: true } },
    };
    expect(configError(production).message).toContain('is a production environment');
  });

  it('gives each database to one environment, so the agent cannot pick a weaker policy for it', () => {
    // The agent names the environment: production's signatures would not guard main_db from staging.
    const shared = configError({
      ...minimal,
      environments: {
        production: { databases: ['main_db'], allowed_signers: 'signers' },
        staging: { databases: ['main_db'], approve_in_client: true },
      },
    });
    expect(shared.message).toContain('database "main_db" is listed by "production" and "staging"');
    // The same database under two names: the same connection variable, the same data directory.
    const aliased = configError({
      databases: {
        main_db: { client: 'pg', connection_env: 'MAIN_DB_URL' },
        also_main: { client: 'pg', connection_env: 'MAIN_DB_URL' },
        local_db: { client: 'pglite', path: './pgdata' },
        also_local: { client: 'pglite', path: 'data/../pgdata' },
      },
      environments: {
        production: { databases: ['main_db', 'local_db'] },
        dev: { databases: ['also_main', 'also_local'], require_approval: 'never' },
      },
    });
    expect(aliased.message).toContain(
      '"main_db" and "also_main" are one database (the connection variable MAIN_DB_URL)',
    );
    expect(aliased.message).toContain(
      '"local_db" and "also_local" are one database (the data directory /base/pgdata)',
    );
    // Each in-memory database is a database of its own.
    const memory = parseConfig(
      {
        databases: {
          scratch_a: { client: 'pglite', path: 'memory://' },
          scratch_b: { client: 'pglite', path: 'memory://' },
        },
        environments: { dev: { databases: ['scratch_a'] }, test: { databases: ['scratch_b'] } },
      },
      '/base',
    );
    expect(Object.keys(memory.databases)).toEqual(['scratch_a', 'scratch_b']);
  });

  it('accepts the example config shipped in examples/', () => {
    const config = loadConfig(path.join(import.meta.dirname, '../examples/approval-gate.yaml'));
    expect(config.environments.production?.databases).toEqual(['main_db']);
  });

  it('reports invalid YAML and duplicate keys in a config file with the file path', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'gate-config-'));
    const file = path.join(dir, 'gate.yaml');
    await writeFile(file, 'approvals_dir: a\napprovals_dir: b\n');
    expect(() => loadConfig(file)).toThrow(/not valid YAML.*unique/s);
    expect(() => loadConfig(path.join(dir, 'missing.yaml'))).toThrow(GateError);
  });
});
