import type { Knex } from 'knex';

/**
 * The execution ledger: one row per approval that reached the executor. The row that marks a
 * migration executed is inserted in the same transaction as the migration itself, so a commit of
 * one is a commit of the other.
 */
export function ledgerMigration(schema: string) {
  return {
    async up(knex: Knex): Promise<void> {
      await knex.schema.createSchemaIfNotExists(schema);
      await knex.schema.withSchema(schema).createTable('ledger', (table) => {
        table.text('approval_id').primary();
        table.text('request_hash').notNullable();
        table.text('state').notNullable();
        table.boolean('dry_run').notNullable();
        table.integer('attempts').notNullable().defaultTo(1);
        table.timestamp('started_at', { useTz: true }).notNullable();
        table.timestamp('finished_at', { useTz: true }).notNullable();
        table.integer('duration_ms').notNullable();
        table.bigInteger('rows_affected').nullable();
        table.jsonb('statements').notNullable();
        table.jsonb('error').nullable();
        table.text('executed_by').notNullable();
      });
    },
    async down(knex: Knex): Promise<void> {
      await knex.schema.withSchema(schema).dropTableIfExists('ledger');
    },
  };
}
