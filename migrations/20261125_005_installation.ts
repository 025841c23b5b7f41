import type { Knex } from 'knex';

/**
 * Installations share a ledger schema (a reinstall, a second project, a teammate on the same database),
 * and each counts its approval ids from APR-YYYYMMDD-001. The ledger key is therefore the installation
 * (the id made once per state directory) together with the approval id. Rows written before this
 * migration keep an empty installation; the executor reads them as its own only when the request hash
 * matches.
 */
export function installationMigration(schema: string) {
  return {
    async up(knex: Knex): Promise<void> {
      const table = knex.schema.withSchema(schema);
      await table.alterTable('ledger_steps', (t) => {
        t.dropForeign(['approval_id']);
      });
      await knex.schema.withSchema(schema).alterTable('ledger', (t) => {
        t.text('installation').notNullable().defaultTo('');
        t.dropPrimary();
      });
      await knex.schema.withSchema(schema).alterTable('ledger', (t) => {
        t.primary(['installation', 'approval_id']);
      });
      await knex.schema.withSchema(schema).alterTable('ledger_steps', (t) => {
        t.text('installation').notNullable().defaultTo('');
        t.dropPrimary();
      });
      await knex.schema.withSchema(schema).alterTable('ledger_steps', (t) => {
        t.primary(['installation', 'approval_id', 'statement']);
        t.foreign(['installation', 'approval_id'])
          .references(['installation', 'approval_id'])
          .inTable(`${schema}.ledger`);
      });
    },
    async down(knex: Knex): Promise<void> {
      await knex.schema.withSchema(schema).alterTable('ledger_steps', (t) => {
        t.dropForeign(['installation', 'approval_id']);
        t.dropPrimary();
      });
      await knex.schema.withSchema(schema).alterTable('ledger', (t) => {
        t.dropPrimary();
      });
      await knex.schema.withSchema(schema).alterTable('ledger', (t) => {
        t.dropColumn('installation');
        t.primary(['approval_id']);
      });
      await knex.schema.withSchema(schema).alterTable('ledger_steps', (t) => {
        t.dropColumn('installation');
        t.primary(['approval_id', 'statement']);
        t.foreign(['approval_id']).references(['approval_id']).inTable(`${schema}.ledger`);
      });
    },
  };
}
