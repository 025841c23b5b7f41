import type { Knex } from 'knex';
import { ledgerMigration } from './20261125_001_ledger.js';
import { ledgerStepsMigration } from './20261125_002_ledger_steps.js';
import { rollbackRehearsalMigration } from './20261125_003_rollback_rehearsal.js';
import { backupMigration } from './20261125_004_backup.js';
import { installationMigration } from './20261125_005_installation.js';

interface GateMigration {
  up(knex: Knex): Promise<void>;
  down(knex: Knex): Promise<void>;
}

/** The gate's own migrations, in order. Names are what knex records in its migrations table. */
const GATE_MIGRATIONS: ReadonlyArray<readonly [string, (schema: string) => GateMigration]> = [
  ['20261125_001_ledger', ledgerMigration],
  ['20261125_002_ledger_steps', ledgerStepsMigration],
  ['20261125_003_rollback_rehearsal', rollbackRehearsalMigration],
  ['20261125_004_backup', backupMigration],
  ['20261125_005_installation', installationMigration],
];

/** The names of the gate's migrations, as knex records them once applied. */
export const GATE_MIGRATION_NAMES: readonly string[] = GATE_MIGRATIONS.map(([name]) => name);

/** A knex migration source over the list above, so the same code runs from src/ (tsx) and dist/. */
export function gateMigrationSource(schema: string): Knex.MigrationSource<string> {
  const migrations = new Map(GATE_MIGRATIONS.map(([name, migration]) => [name, migration(schema)]));
  return {
    getMigrations: async () => [...migrations.keys()],
    getMigrationName: (name) => name,
    getMigration: async (name) => {
      const migration = migrations.get(name);
      if (!migration) throw new Error(`Unknown gate migration ${name}`);
      return migration;
    },
  };
}
