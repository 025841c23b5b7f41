import type { ApprovalRequest } from '../approvals/request.js';
import type { Config } from '../config.js';
import { analyseSql, type Analysis } from '../migration/analyse.js';
import type { RelationFacts } from '../migration/catalog.js';
import type { RiskFinding } from '../migration/risk-codes.js';
import { assessRisks } from '../migration/risks.js';

/**
 * What a request's statements risk: computed from the parse tree (and from the live catalog where it
 * was read at request time), remembered per request so that status reads do not re-parse.
 */
export class Findings {
  readonly #config: Config;
  readonly #byId = new Map<string, RiskFinding[]>();
  /** Catalog facts at request time, kept for the results of this instance's own requests. */
  readonly #impact = new Map<string, readonly RelationFacts[]>();

  constructor(config: Config) {
    this.#config = config;
  }

  /** Findings from the parse tree, and from the live catalog when it was read (`impact`). */
  assess(analysis: Analysis, impact: readonly RelationFacts[] = []): RiskFinding[] {
    return assessRisks(
      analysis.statements,
      {
        lockTimeoutMs: this.#config.executor.lock_timeout_ms,
        lockRetries: this.#config.executor.lock_retries,
      },
      { foreignTables: new Set(impact.filter((f) => f.kind === 'foreign table').map((f) => f.name)) },
    );
  }

  remember(id: string, findings: RiskFinding[], impact: readonly RelationFacts[]): void {
    this.#byId.set(id, findings);
    this.#impact.set(id, impact);
  }

  impactOf(id: string): readonly RelationFacts[] {
    return this.#impact.get(id) ?? [];
  }

  /** Risk findings of a stored request, recomputed from its record on first use. */
  async of(request: ApprovalRequest): Promise<RiskFinding[]> {
    let findings = this.#byId.get(request.id);
    if (!findings) {
      // Without the catalog here: a finding that needs it (a foreign table) is in the file and in
      // the results of the instance that took the request.
      findings = this.assess(await analyseSql(request.command.sql), this.#impact.get(request.id));
      this.#byId.set(request.id, findings);
    }
    return findings;
  }
}
