/**
 * Structured JSON logs through pino. Every line carries the node id, its role and its epoch,
 * read at the moment the line is written.
 */
import pino, { type Logger } from 'pino'
import type { LogLevel } from './config.js'

export interface LogContext {
  role: () => string
  epoch: () => number
}

export function createLogger(
  nodeId: string,
  level: LogLevel,
  context: LogContext,
  destination?: pino.DestinationStream,
): Logger {
  return pino(
    {
      level,
      base: { nodeId },
      mixin: () => ({ role: context.role(), epoch: context.epoch() }),
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? pino.destination({ sync: false }),
  )
}
