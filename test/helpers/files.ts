import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { ApprovalStore } from '../../src/approvals/store.js';

/**
 * Resolves with the path of the first approval file in `dir` not in `seen` (and adds it). The directory
 * may not exist yet: a stdio server answers `initialize` before its store has opened.
 */
export async function nextApprovalFile(dir: string, seen: Set<string>, timeoutMs = 15_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    for (const name of await readdir(dir).catch(() => [])) {
      if (ApprovalStore.idOfFileName(name) !== null && !seen.has(name)) {
        seen.add(name);
        return path.join(dir, name);
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`no new approval file appeared in ${dir}`);
}

/** Polls `file` until `predicate(text)` holds; for asserting on what the server writes. */
export async function waitForFileText(
  file: string,
  predicate: (text: string) => boolean,
  timeoutMs = 10_000,
): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let text = '';
  while (Date.now() < deadline) {
    text = await readFile(file, 'utf8').catch(() => '');
    if (predicate(text)) return text;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`${file} never satisfied the condition; last content:\n${text}`);
}

export async function approvalFileNames(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((name) => ApprovalStore.idOfFileName(name) !== null);
}
