import { randomBytes } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { updateFrontMatter } from './frontmatter.js';

/** How an editor saves: vim and VS Code write in place; many others write a temp file and rename it. */
export type SaveStyle = 'in-place' | 'rename';

export interface HumanDecision {
  readonly status: 'APPROVED' | 'REJECTED';
  readonly decidedBy: string;
  readonly decidedAt?: string;
  readonly reason?: string;
  readonly comments?: string;
  readonly secondApprover?: string;
  /** In a signed environment: decided_by's SSH signature (armored). */
  readonly signature?: string;
}

/**
 * The second approver's part of a decision another person already wrote: their name and, in a signed
 * environment, their signature; status and decided_by stay as they are.
 */
export async function secondApprovalInFile(
  file: string,
  second: { readonly name: string; readonly signature?: string },
  style: SaveStyle = 'rename',
): Promise<void> {
  const text = await readFile(file, 'utf8');
  const edited = updateFrontMatter(text, {
    second_approver: second.name,
    ...(second.signature !== undefined ? { second_signature: second.signature } : {}),
    // The gate's answer to an earlier edit would read as its answer to this one: any gate_error
    // after this save is the server's word on this edit (updateFrontMatter deletes undefined keys).
    gate_error: undefined,
  });
  await saveAs(file, edited, style);
}

/** Saves `text` to `file` the way an editor with `style` would. */
export async function saveAs(file: string, text: string, style: SaveStyle): Promise<void> {
  if (style === 'in-place') {
    await writeFile(file, text);
    return;
  }
  const temp = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(4).toString('hex')}.swp`);
  await writeFile(temp, text);
  await rename(temp, file);
}

/**
 * Makes exactly the edit the file's Human Instructions ask of a person: status, decided_by,
 * decided_at and (for a rejection) reason in the front matter, then saves. The gate cannot tell it
 * from a hand edit, which is the point: there is one decision path.
 */
export async function decideInFile(
  file: string,
  decision: HumanDecision,
  style: SaveStyle = 'rename',
): Promise<void> {
  const text = await readFile(file, 'utf8');
  const edited = updateFrontMatter(text, {
    status: decision.status,
    decided_by: decision.decidedBy,
    ...(decision.decidedAt !== undefined ? { decided_at: decision.decidedAt } : {}),
    ...(decision.reason !== undefined ? { reason: decision.reason } : {}),
    ...(decision.comments !== undefined ? { comments: decision.comments } : {}),
    ...(decision.secondApprover !== undefined ? { second_approver: decision.secondApprover } : {}),
    ...(decision.signature !== undefined ? { signature: decision.signature } : {}),
    // The gate's answer to an earlier edit would read as its answer to this one: any gate_error
    // after this save is the server's word on this edit (updateFrontMatter deletes undefined keys).
    gate_error: undefined,
  });
  await saveAs(file, edited, style);
}
