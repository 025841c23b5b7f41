import { showDecisionInBody } from '../approvals/decision-display.js';
import { updateFrontMatter, type FrontMatterValue } from '../approvals/frontmatter.js';
import { renderOutcomeSection, RESULT_MARKER, type OutcomeSection } from '../approvals/render.js';
import { hasOutcomeMarker } from '../approvals/sections.js';
import type { ApprovalStore } from '../approvals/store.js';
import { describeError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ChangeFeed } from './changes.js';

/**
 * The approval file as a view of the server's model: the runner writes execution fields and the
 * Outcome section into it. Nothing is ever read back from it as the truth about execution; a failed
 * write is logged and costs only the view.
 */
export class FileView {
  readonly #store: ApprovalStore;
  readonly #log: Logger;
  readonly #changes: ChangeFeed;
  /** The last write queued for each file: writes to one file land in the order they were asked for. */
  readonly #queued = new Map<string, Promise<void>>();

  constructor(store: ApprovalStore, log: Logger, changes: ChangeFeed) {
    this.#store = store;
    this.#log = log;
    this.#changes = changes;
  }

  /**
   * Sets front matter `fields` and, with `outcome`, shows the decision and appends the Outcome once.
   * Queued behind earlier writes to the same file, so a caller need not wait for one (the "running"
   * fields) before the next (the outcome) can be asked for. Never rejects: a failed write is logged.
   */
  write(id: string, fields: Record<string, FrontMatterValue>, outcome?: OutcomeSection): Promise<void> {
    const written = (this.#queued.get(id) ?? Promise.resolve()).then(() => this.#write(id, fields, outcome));
    this.#queued.set(id, written);
    void written.then(() => {
      if (this.#queued.get(id) === written) this.#queued.delete(id);
    });
    return written;
  }

  /** Resolves once every write asked for so far has landed (or failed, and was logged). */
  async settled(): Promise<void> {
    while (this.#queued.size > 0) await Promise.all(this.#queued.values());
  }

  async #write(
    id: string,
    fields: Record<string, FrontMatterValue>,
    outcome?: OutcomeSection,
  ): Promise<void> {
    try {
      const written = await this.#store.updateApprovalFile(id, (text) => {
        const updated = updateFrontMatter(text, fields);
        if (outcome === undefined) return updated;
        const shown = showDecisionInBody(updated, outcome.decision);
        return hasOutcomeMarker(shown, RESULT_MARKER)
          ? shown
          : `${shown.replace(/\n*$/, '\n')}${renderOutcomeSection(outcome)}`;
      });
      if (written) this.#changes.emit({ id, kind: 'shown' });
      else
        this.#log.warn({ approval_id: id }, 'approval file missing or unreadable; outcome not written to it');
    } catch (error) {
      this.#log.error(
        { approval_id: id, err: describeError(error) },
        'could not write the outcome into the approval file',
      );
    }
  }
}
