import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { parseConfig, type Config, type ConfigInput } from '../../src/config.js';

export interface Workspace {
  readonly dir: string;
  readonly configPath: string;
  readonly config: Config;
}

/** A temporary directory with a config file; `overrides` are merged over a pg-backed default. */
export async function createWorkspace(overrides: Partial<ConfigInput> = {}): Promise<Workspace> {
  const dir = await mkdtemp(path.join(tmpdir(), 'approval-gate-test-'));
  const input: ConfigInput = {
    approvals_dir: 'approvals',
    state_dir: 'state',
    // Each database belongs to one environment: the test database under one name for each.
    databases: {
      main_db: { client: 'pg', connection_env: 'TEST_MAIN_DB_URL' },
      staging_db: { client: 'pg', connection_env: 'TEST_STAGING_DB_URL' },
      dev_db: { client: 'pg', connection_env: 'TEST_DEV_DB_URL' },
    },
    environments: { production: { databases: ['main_db'] }, staging: { databases: ['staging_db'] } },
    wait: { max_wait_seconds: 20, progress_interval_seconds: 0.5 },
    gate: { recheck_interval_ms: 1000 },
    executor: { lock_timeout_ms: 1000, statement_timeout_ms: 30_000 },
    ...overrides,
  };
  const configPath = path.join(dir, 'approval-gate.yaml');
  await writeFile(configPath, stringify(input));
  return { dir, configPath, config: parseConfig(input, dir, configPath) };
}
