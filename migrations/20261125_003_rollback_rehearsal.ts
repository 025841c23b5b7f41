import type { Knex } from 'knex';

/** Dry runs also run the rollback SQL; the ledger keeps whether it worked. */
export function rollbackRehearsalMigration(schema: string) {
  return {
    async up(knex: Knex): Promise<void> {
      await knex.schema.withSchema(schema).alterTable('ledger', (table) => {
        table.jsonb('rollback_rehearsal').nullable();
      });
    },
    async down(knex: Knex): Promise<void> {
      await knex.schema.withSchema(schema).alterTable('ledger', (table) => {
        table.dropColumn('rollback_rehearsal');
      });
    },
  };
}
