/**
 * The archive-restore check: after a run, a restore from the log archive (its base backup and
 * segments) to the cluster's final LSN must have the very digest the converged cluster has.
 * It proves that what the archive took through the run's faults (kills, pauses, partitions,
 * failovers) is exactly the committed log: no entry missing, none extra, none that a failover
 * rolled back.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KvError } from '@kvstore/protocol'
import { restore, type RestoreResult } from '@kvstore/storage'
import type { Verdict } from '../history.js'

export interface ArchiveRestoreInput {
  /** A local copy of the archive directory. */
  archiveDir: string
  /** The member that archived (for the summary). */
  node: string
  /** The cluster's final LSN and digest, once every node agrees on them. */
  lsn: number
  digest: string
}

export async function checkArchiveRestore(input: ArchiveRestoreInput): Promise<Verdict> {
  const scratch = await mkdtemp(join(tmpdir(), 'kv-chaos-restore-'))
  try {
    const result = (await restore({
      from: input.archiveDir,
      target: { kind: 'lsn', lsn: input.lsn },
      dataDir: join(scratch, 'n1'),
      nodeId: 'n1',
      clusterId: 'chaos-restore-check',
    })) as RestoreResult
    const valid = result.digest.digest === input.digest && result.lsn === input.lsn
    return {
      checker: 'archive-restore',
      valid,
      summary: valid
        ? `a restore from ${input.node}'s archive (base at LSN ${result.base.lsn} + ${result.entries} archived entries) to LSN ${input.lsn} has the cluster's digest`
        : `a restore from ${input.node}'s archive to LSN ${input.lsn} reached LSN ${result.lsn} with digest ${result.digest.digest.slice(0, 12)}, the cluster has ${input.digest.slice(0, 12)}`,
      details: {
        node: input.node,
        lsn: input.lsn,
        baseLsn: result.base.lsn,
        entries: result.entries,
        segments: result.segments,
        restoredDigest: result.digest.digest,
        clusterDigest: input.digest,
      },
    }
  } catch (err) {
    const code = err instanceof KvError ? err.code : 'error'
    return {
      checker: 'archive-restore',
      valid: false,
      summary: `a restore from ${input.node}'s archive to LSN ${input.lsn} failed: ${code}: ${(err as Error).message}`,
      details: { node: input.node, lsn: input.lsn, code, message: (err as Error).message },
    }
  } finally {
    await rm(scratch, { recursive: true, force: true })
  }
}
