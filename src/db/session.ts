export interface QueryResult {
  readonly rows: Record<string, unknown>[];
  /** Rows the statement affected, where Postgres reports it (INSERT/UPDATE/DELETE/…); else null. */
  readonly rowCount: number | null;
}

/**
 * One connection, taking SQL verbatim: no `?` placeholder rewriting, unlike `knex.raw`. Every query
 * goes through the extended query protocol, where Postgres refuses a text holding more than one
 * command ("cannot insert multiple commands into a prepared statement"): whatever our parser and
 * Postgres' lexer think of the text, one call can never run two statements.
 */
export interface SqlSession {
  query(text: string, params?: readonly unknown[]): Promise<QueryResult>;
}

/** A pooled session that can refuse to go back to the pool when its state is no longer known. */
export interface PooledSession extends SqlSession {
  /**
   * The connection's state is unknown: it is closed instead of going back to the pool (pg), or the
   * embedded instance is closed and opened afresh before the next session (PGlite on disk).
   */
  dispose(reason: string): void;
}
