/**
 * The audit log: a pino stream of its own (a file, stdout, stderr, or off), one JSON line per
 * login, auth-store change, admin call and refused request, with who, what, from where and
 * the result. Refusals are capped at `refusalsPerSecondMax` lines a second, with a count of
 * those left out, so a flood of bad requests cannot fill the disk.
 */
import pino, { type Logger } from 'pino'

export interface AuditEntry {
  /** The user, or null when the request carried no valid credential. */
  user: string | null
  via: 'token' | 'certificate' | 'router' | 'password' | 'anonymous'
  remote: string
  method: string
  url: string
  status: number
  code?: string
  /** What was done, for auth and admin calls (for example "user.add alice"). */
  action?: string
}

const refusalsPerSecondMax = 50

export class AuditLog {
  private readonly logger: Logger | null
  private readonly destination: pino.DestinationStream & {
    reopen?: () => void
    flushSync?: () => void
  }
  private windowStartMs = 0
  private refusals = 0
  private dropped = 0

  constructor(target: string, nodeId: string) {
    if (target === 'off') {
      this.logger = null
      this.destination = pino.destination({ dest: 1, sync: false })
      return
    }
    const dest = target === 'stdout' ? 1 : target === 'stderr' ? 2 : target
    this.destination = pino.destination({ dest, sync: false, mkdir: true, append: true })
    this.logger = pino(
      {
        base: { nodeId, audit: true },
        timestamp: pino.stdTimeFunctions.isoTime,
        formatters: { level: (label) => ({ level: label }) },
      },
      this.destination,
    )
  }

  get enabled(): boolean {
    return this.logger !== null
  }

  /** Records a login, an auth change or an admin call. */
  record(entry: AuditEntry, message = 'audit'): void {
    this.logger?.info(entry, message)
  }

  /** Records a refused request (401, 403, 429), at most `refusalsPerSecondMax` a second. */
  refusal(entry: AuditEntry): void {
    if (this.logger === null) return
    const now = Date.now()
    if (now - this.windowStartMs >= 1000) {
      if (this.dropped > 0)
        this.logger.warn({ dropped: this.dropped }, 'audit: refusals left out of the last second')
      this.windowStartMs = now
      this.refusals = 0
      this.dropped = 0
    }
    if (this.refusals >= refusalsPerSecondMax) {
      this.dropped++
      return
    }
    this.refusals++
    this.logger.warn(entry, 'refused')
  }

  /** Opens the file again (after log rotation moved it); on SIGHUP. */
  reopen(): void {
    this.destination.reopen?.()
  }

  flush(): void {
    this.logger?.flush()
  }
}
