import type { Knex } from 'knex';

/**
 * Statements that cannot run in a transaction (CREATE INDEX CONCURRENTLY, …) run one by one, each
 * committed on its own. A step row is committed as `started` before the statement and updated to
 * `done` after it, so a crash in between leaves the evidence needed to report "unknown" instead of
 * guessing, and nothing is ever retried automatically.
 */
export function ledgerStepsMigration(schema: string) {
  return {
    async up(knex: Knex): Promise<void> {
      await knex.schema.withSchema(schema).alterTable('ledger', (table) => {
        table.boolean('transactional').notNullable().defaultTo(true);
      });
      await knex.schema.withSchema(schema).createTable('ledger_steps', (table) => {
        table.text('approval_id').notNullable().references('approval_id').inTable(`${schema}.ledger`);
        table.integer('statement').notNullable();
        table.text('kind').notNullable();
        table.text('sql').notNullable();
        table.text('state').notNullable();
        table.timestamp('started_at', { useTz: true }).notNullable();
        table.timestamp('finished_at', { useTz: true }).nullable();
        table.bigInteger('rows_affected').nullable();
        table.jsonb('error').nullable();
        table.primary(['approval_id', 'statement']);
      });
    },
    async down(knex: Knex): Promise<void> {
      await knex.schema.withSchema(schema).dropTableIfExists('ledger_steps');
      await knex.schema.withSchema(schema).alterTable('ledger', (table) => {
        table.dropColumn('transactional');
      });
    },
  };
}
