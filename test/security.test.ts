/**
 * The attacks a security review made, each against real node processes, each refused:
 *
 * - a forged leader without a certificate (refused at the TLS handshake);
 * - a member's valid certificate used to speak as another member (refused and counted; nothing
 *   is written);
 * - the epoch bomb, one frame at epoch 2^53−1 (a bad frame; the cluster stays writable), and a
 *   frame at the highest epoch a frame may carry (the cluster still elects and writes);
 * - certificates of another CA, and of another cluster under the same CA;
 * - forged leaderless store and hint calls.
 */
import http2 from 'node:http2'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  EntryKind,
  FrameDecoder,
  OpType,
  counterMax,
  decodePeerReply,
  encodeFrame,
  encodeLogEntry,
  encodePeerRequest,
  epochMax,
  type Frame,
  type PeerRequestBody,
} from '@kvstore/protocol'
import { initCerts, makeMemberCert } from '../packages/cli/src/certs.js'
import { LeaderlessCluster, metric, TestCluster } from '@kvstore/testkit'
import { caPem, memberTls, testCertsDir } from './support/certs.js'

type Tls = { ca?: Buffer; cert?: Buffer | string; key?: Buffer | string }

interface PeerExchange {
  /** The TLS handshake failed or the connection was closed before any answer. */
  refusedAtConnect: boolean
  status: number
  frames: Frame[]
}

/** Opens a replication stream to a peer port, sends `frames`, and collects what comes back. */
function replicationStream(peerUrl: string, tls: Tls, frames: Frame[], waitMs = 1500) {
  return new Promise<PeerExchange>((resolve) => {
    const result: PeerExchange = { refusedAtConnect: true, status: 0, frames: [] }
    const session = http2.connect(peerUrl, { ...tls, rejectUnauthorized: true })
    const finish = () => {
      clearTimeout(timer)
      session.destroy()
      resolve(result)
    }
    const timer = setTimeout(finish, waitMs)
    session.on('error', finish)
    session.on('close', finish)
    const stream = session.request({
      ':method': 'POST',
      ':path': '/peer/v1/stream',
      'content-type': 'application/x-kv-frames',
    })
    stream.on('error', () => {})
    const decoder = new FrameDecoder()
    stream.on('response', (headers) => {
      result.refusedAtConnect = false
      result.status = Number(headers[':status'])
    })
    stream.on('data', (chunk: Buffer) => {
      try {
        result.frames.push(...decoder.push(chunk))
      } catch {
        // a frame the test cannot read is not what it checks
      }
    })
    stream.on('close', finish)
    for (const frame of frames) stream.write(encodeFrame(frame))
  })
}

/** Raw bytes of a frame, for epochs the encoder would refuse to make. */
function hello(from: string, to: string, clusterId: string, epoch: number): Frame {
  return { from, epoch, body: { kind: 'hello', clusterId, to, leader: '' } }
}

async function clusterIdOf(url: string): Promise<string> {
  return ((await (await fetch(`${url}/v1/cluster`)).json()) as { clusterId: string }).clusterId
}

describe('peer security, single-leader', () => {
  let cluster: TestCluster
  let clusterId: string

  beforeAll(async () => {
    cluster = await TestCluster.start(3)
    clusterId = await clusterIdOf(cluster.leader.url)
  })
  afterAll(async () => {
    await cluster.stop()
  })

  /** Every member's epoch, and whether a write still succeeds through the leader. */
  async function stillWritable(key: string): Promise<number[]> {
    await cluster.waitForLeader()
    const res = await fetch(`${cluster.leader.url}/v1/kv/${key}`, { method: 'PUT', body: 'ok' })
    expect(res.status).toBe(200)
    return Promise.all(
      cluster.members
        .filter((m) => m.process !== null)
        .map(async (m) => ((await cluster.status(m.id)) as { epoch?: number }).epoch ?? 0),
    )
  }

  it('refuses a forged leader without a certificate at the TLS handshake, and counts it', async () => {
    const follower = cluster.followers[0]!
    const before = await metric(follower.url, 'kv_peer_refused_total', 'reason="handshake"')
    const forged: Frame[] = [
      hello('n1', follower.id, clusterId, 5000),
      {
        from: 'n1',
        epoch: 5000,
        body: {
          kind: 'append',
          prevLsn: 0,
          prevEpoch: 0,
          entries: [],
          commitLsn: 0,
          leaderLastLsn: 0,
          leaderClockMs: Date.now(),
        },
      },
    ]
    const exchange = await replicationStream(follower.peerUrl, { ca: caPem() }, forged)
    expect(exchange.status).not.toBe(200)
    expect(exchange.frames).toEqual([])
    // Plaintext HTTP/2 on the peer port gets nowhere either.
    const plain = await replicationStream(follower.peerUrl.replace('https:', 'http:'), {}, forged)
    expect(plain.status).toBe(0)
    await vi.waitFor(async () =>
      expect(
        await metric(follower.url, 'kv_peer_refused_total', 'reason="handshake"'),
      ).toBeGreaterThan(before),
    )
  })

  it('refuses a member certificate speaking as another member, counts it, and writes nothing', async () => {
    const leader = cluster.leader
    const target = cluster.followers.find((m) => m.id !== 'n3') ?? cluster.followers[0]!
    const impostor = cluster.members.find((m) => m.id !== leader.id && m.id !== target.id)!
    const before = await metric(target.url, 'kv_peer_refused_total', 'reason="sender_mismatch"')
    const entry = encodeLogEntry({
      epoch: 5000,
      lsn: 1_000_000,
      kind: EntryKind.Put,
      ops: [{ type: OpType.Put, key: Buffer.from('forged'), value: Buffer.from('evil') }],
      timestampMs: Date.now(),
      requestId: '',
    })
    // The certificate is the impostor's own; the frames claim to come from the leader.
    const exchange = await replicationStream(target.peerUrl, memberTls(impostor.id), [
      hello(leader.id, target.id, clusterId, 5000),
      {
        from: leader.id,
        epoch: 5000,
        body: {
          kind: 'append',
          prevLsn: 999_999,
          prevEpoch: 4999,
          entries: [entry],
          commitLsn: 1_000_000,
          leaderLastLsn: 1_000_000,
          leaderClockMs: Date.now(),
        },
      },
    ])
    expect(exchange.status).toBe(403)
    expect(exchange.frames.map((f) => f.body)).toContainEqual(
      expect.objectContaining({ kind: 'refusal', code: 'KV_ERR_PEER_IDENTITY' }),
    )
    expect(await metric(target.url, 'kv_peer_refused_total', 'reason="sender_mismatch"')).toBe(
      before + 1,
    )
    // Hello honest, then a frame naming another sender on the same stream: refused too.
    const midway = await replicationStream(target.peerUrl, memberTls(impostor.id), [
      hello(impostor.id, target.id, clusterId, 1),
      { from: leader.id, epoch: 5000, body: { kind: 'timeoutNow' } },
    ])
    expect(midway.frames.map((f) => f.body)).toContainEqual(
      expect.objectContaining({ kind: 'refusal', code: 'KV_ERR_PEER_IDENTITY' }),
    )
    for (const m of cluster.members) {
      const res = await fetch(`${m.url}/v1/kv/forged`)
      expect(res.status).toBe(404)
    }
    const epochs = await stillWritable('after/impostor')
    expect(Math.max(...epochs)).toBeLessThan(5000)
  })

  it('refuses a snapshot from a member that is not the leader (it would replace the state)', async () => {
    await stillWritable('before/snapshot')
    const [target, sender] = cluster.followers as [
      (typeof cluster.followers)[number],
      (typeof cluster.followers)[number],
    ]
    const before = await cluster.digest(target.id)
    const refused = await metric(target.url, 'kv_peer_refused_total', 'reason="bad_frame"')
    const status = (await cluster.status(target.id)) as { epoch?: number }
    await replicationStream(target.peerUrl, memberTls(sender.id), [
      hello(sender.id, target.id, clusterId, status.epoch ?? 1),
      {
        from: sender.id,
        epoch: status.epoch ?? 1,
        body: {
          kind: 'snapshotChunk',
          snapshotLsn: 1_000_000,
          snapshotEpoch: status.epoch ?? 1,
          sequence: 0,
          records: [],
          last: true,
          digest: '',
          requests: [],
        },
      },
    ])
    await vi.waitFor(async () =>
      expect(
        await metric(target.url, 'kv_peer_refused_total', 'reason="bad_frame"'),
      ).toBeGreaterThan(refused),
    )
    const after = await cluster.digest(target.id)
    expect(after.digest).toBe(before.digest)
    expect(after.appliedLsn).toBe(before.appliedLsn)
    await stillWritable('after/snapshot')
  })

  it('refuses the epoch bomb (2^53−1) as a bad frame and stays writable', async () => {
    const before = await Promise.all(
      cluster.members.map((m) => metric(m.url, 'kv_peer_refused_total', 'reason="bad_frame"')),
    )
    const sender = cluster.followers[0]!
    for (const target of cluster.members.filter((m) => m.id !== sender.id)) {
      await replicationStream(target.peerUrl, memberTls(sender.id), [
        hello(sender.id, target.id, clusterId, 1),
        {
          from: sender.id,
          epoch: Number.MAX_SAFE_INTEGER,
          body: {
            kind: 'heartbeat',
            commitLsn: 0,
            leaderLastLsn: 0,
            leaderClockMs: Date.now(),
            members: [],
          },
        },
      ])
    }
    const after = await Promise.all(
      cluster.members.map((m) => metric(m.url, 'kv_peer_refused_total', 'reason="bad_frame"')),
    )
    expect(after.reduce((a, b) => a + b, 0)).toBeGreaterThan(before.reduce((a, b) => a + b, 0))
    const epochs = await stillWritable('after/bomb')
    expect(Math.max(...epochs)).toBeLessThan(1000)
    // Even after a restart of every member, nothing of the bomb was kept.
    for (const m of cluster.members) {
      await cluster.stopMember(m.id)
      await cluster.startMember(m.id)
    }
    expect(Math.max(...(await stillWritable('after/bomb/restart')))).toBeLessThan(1000)
  })

  it('does not let one frame at the highest epoch a frame may carry stop elections', async () => {
    const sender = cluster.followers[0]!
    for (const target of cluster.members.filter((m) => m.id !== sender.id)) {
      await replicationStream(target.peerUrl, memberTls(sender.id), [
        hello(sender.id, target.id, clusterId, 1),
        {
          from: sender.id,
          epoch: epochMax,
          body: {
            kind: 'heartbeat',
            commitLsn: 0,
            leaderLastLsn: 0,
            leaderClockMs: Date.now(),
            members: [],
          },
        },
      ])
    }
    // The cluster still has a leader that takes writes, and can elect a new one.
    await stillWritable('after/max-epoch')
    const old = cluster.leader
    await cluster.kill(old.id)
    const epochs = (await stillWritable('after/max-epoch/failover')).filter((e) => e > 0)
    expect(Math.max(...epochs)).toBeLessThan(epochMax)
    await cluster.startMember(old.id)
  })

  it('refuses certificates of another CA, and of another cluster under the same CA', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kv-other-ca-'))
    try {
      await initCerts({ dir, members: ['n1', 'n2', 'n3'] })
      const target = cluster.members.find((m) => m.id !== 'n1')!
      const before = await metric(target.url, 'kv_peer_refused_total', 'reason="handshake"')
      const foreign = await replicationStream(
        target.peerUrl,
        {
          ca: caPem(),
          cert: await readFile(join(dir, 'n1.crt')),
          key: await readFile(join(dir, 'n1.key')),
        },
        [hello('n1', target.id, clusterId, 1)],
      )
      expect(foreign.frames).toEqual([])
      await vi.waitFor(async () =>
        expect(
          await metric(target.url, 'kv_peer_refused_total', 'reason="handshake"'),
        ).toBeGreaterThan(before),
      )
      // Signed by this cluster's CA, but naming member n1 of another cluster.
      const ca = {
        certPem: await readFile(join(testCertsDir(), 'ca.crt'), 'utf8'),
        keyPem: await readFile(join(testCertsDir(), 'ca.key'), 'utf8'),
      }
      const other = await makeMemberCert(ca, { clusterId: 'kv-another-cluster', memberId: 'n1' })
      const noIdentity = await metric(
        target.url,
        'kv_peer_refused_total',
        'reason="no_member_identity"',
      )
      const sameCa = await replicationStream(
        target.peerUrl,
        { ca: caPem(), cert: other.certPem, key: other.keyPem },
        [hello('n1', target.id, clusterId, 1)],
      )
      expect(sameCa.frames).toEqual([])
      expect(await metric(target.url, 'kv_peer_refused_total', 'reason="no_member_identity"')).toBe(
        noIdentity + 1,
      )
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('peer security, leaderless', () => {
  let cluster: LeaderlessCluster

  beforeAll(async () => {
    cluster = await LeaderlessCluster.start(3, ['--replicas', '3'])
  })
  afterAll(async () => {
    await cluster.close()
  })

  /** One leaderless peer request on its own stream; the reply, or null when refused. */
  function peerCall(
    peerUrl: string,
    tls: Tls,
    request: {
      clusterId: string
      from: string
      to: string
      ringVersion: number
      body: PeerRequestBody
    },
  ) {
    return new Promise<{ status: number; reply: ReturnType<typeof decodePeerReply> | null }>(
      (resolve) => {
        const session = http2.connect(peerUrl, tls)
        const done = (status: number, reply: ReturnType<typeof decodePeerReply> | null) => {
          session.destroy()
          resolve({ status, reply })
        }
        session.on('error', () => done(0, null))
        const stream = session.request({ ':method': 'POST', ':path': '/peer/v1/ll' })
        stream.on('error', () => done(0, null))
        let status = 0
        const chunks: Buffer[] = []
        stream.on('response', (h) => (status = Number(h[':status'])))
        stream.on('data', (c: Buffer) => chunks.push(c))
        stream.on('end', () =>
          done(status, chunks.length ? decodePeerReply(Buffer.concat(chunks)) : null),
        )
        stream.end(encodePeerRequest(request))
      },
    )
  }

  it('refuses forged store and hint calls', async () => {
    const url = cluster.member('n1').url
    const put = await fetch(`${url}/v1/kv/precious?w=all`, { method: 'PUT', body: 'kept' })
    expect(put.status).toBe(200)
    const clusterId = `${await clusterIdOf(url)}/replicas=3/vnodes=64/conflicts=siblings`
    // Forged as a member would send them: under the ring the cluster holds now (a request under
    // an older ring is refused with KV_ERR_STALE_RING before anything else is looked at).
    const { ringVersion } = (await (await fetch(`${url}/v1/cluster`)).json()) as {
      ringVersion: number
    }
    const record = {
      vector: { 'n1.forged': 1 },
      siblings: [
        {
          dot: { node: 'n1.forged', counter: 1 },
          value: {
            value: Buffer.from('evil'),
            hlc: { wallMs: Date.now(), logical: 0, node: 'n1' },
          },
        },
      ],
    }
    const store: PeerRequestBody = {
      kind: 'store',
      key: Buffer.from('precious'),
      record,
      hintFor: '',
    }
    const target = cluster.member('n2')
    // No certificate: no connection.
    const anonymous = await peerCall(
      target.peerUrl,
      { ca: caPem() },
      {
        clusterId,
        ringVersion,
        from: 'n1',
        to: 'n2',
        body: store,
      },
    )
    expect(anonymous.reply).toBeNull()
    // n3's certificate, claiming to be n1.
    const impostor = await peerCall(target.peerUrl, memberTls('n3'), {
      clusterId,
      ringVersion,
      from: 'n1',
      to: 'n2',
      body: store,
    })
    expect(impostor.status).toBe(403)
    expect(impostor.reply).toMatchObject({ kind: 'refusal', code: 'KV_ERR_PEER_IDENTITY' })
    // n3 as itself, with a counter no member can have minted: a bad frame.
    const huge = await peerCall(target.peerUrl, memberTls('n3'), {
      clusterId,
      ringVersion,
      from: 'n3',
      to: 'n2',
      body: {
        ...store,
        record: {
          vector: { 'n3.forged': counterMax + 1 },
          siblings: [
            { ...record.siblings[0]!, dot: { node: 'n3.forged', counter: counterMax + 1 } },
          ],
        },
      },
    })
    expect(huge.reply).toMatchObject({ kind: 'refusal', code: 'KV_ERR_BAD_FRAME' })
    // A hint meant for the member itself.
    const selfHint = await peerCall(target.peerUrl, memberTls('n3'), {
      clusterId,
      ringVersion,
      from: 'n3',
      to: 'n2',
      body: { ...store, hintFor: 'n2' },
    })
    expect(selfHint.reply).toMatchObject({ kind: 'refusal', code: 'KV_ERR_BAD_FRAME' })
    const read = await fetch(`${url}/v1/kv/precious?r=all`)
    expect(read.status).toBe(200)
    expect(await read.text()).toBe('kept')
  })
})
