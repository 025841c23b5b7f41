import { createLogger } from '../../src/log.js';

/** A logger that drops everything, for tests that do not look at logs. */
export const silentLogger = createLogger('silent');
