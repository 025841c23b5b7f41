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
function gateMigrations(schema: string): ReadonlyArray<readonly [string, GateMigration]> {
  return [
    ['20261125_001_ledger', ledgerMigration(schema)],
    ['20261125_002_ledger_steps', ledgerStepsMigration(schema)],
    ['20261125_003_rollback_rehearsal', rollbackRehearsalMigration(schema)],
    ['20261125_004_backup', backupMigration(schema)],
    ['20261125_005_installation', installationMigration(schema)],
  ];
}

/** A knex migration source over the list above, so the same code runs from src/ (tsx) and dist/. */
export function gateMigrationSource(schema: string): Knex.MigrationSource<string> {
  const migrations = new Map(gateMigrations(schema));
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
