import { ConfigError, parseConfig } from '../src/config.js'
import {
  configLimitProblems,
  constantProblems,
  limitCodes,
  LimitsError,
  nodeConstants,
  peerLimits,
  type LimitCode,
  type NodeConstants,
  type PeerLimits,
} from '../src/limits.js'

const members =
  'n1@https://127.0.0.1:7001@https://127.0.0.1:7101,n2@https://127.0.0.1:7002@https://127.0.0.1:7102,n3@https://127.0.0.1:7003@https://127.0.0.1:7103'
const cluster = ['--members', members, '--certs-dir', '/etc/kv/certs']
const leaderless = [...cluster, '--mode', 'leaderless']

/** Every code a test below has seen fail, to check that none is left untested. */
const seen = new Set<LimitCode>()

/** Runs the start-up path and returns the codes and message it refuses with. */
function refusal(args: string[]): { codes: readonly string[]; message: string } {
  try {
    parseConfig(args, {})
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError)
    const { codes, message } = err as ConfigError
    for (const code of codes) seen.add(code as LimitCode)
    return { codes, message }
  }
  throw new Error(`parseConfig accepted ${args.join(' ')}`)
}

function withConstants(change: {
  [K in keyof NodeConstants]?: Partial<NodeConstants[K]>
}): NodeConstants {
  return {
    encoding: { ...nodeConstants.encoding, ...change.encoding },
    memberIdBytesMax: change.memberIdBytesMax ?? nodeConstants.memberIdBytesMax,
    replication: { ...nodeConstants.replication, ...change.replication },
    leaderless: { ...nodeConstants.leaderless, ...change.leaderless },
  }
}

describe('the node limits, at load', () => {
  it('fit each other and protocol', () => {
    expect(constantProblems()).toEqual([])
  })

  it.each<[string, Parameters<typeof withConstants>[0], LimitCode, RegExp]>([
    [
      'member ids longer than a frame names',
      { memberIdBytesMax: 65 },
      'KV_LIMIT_MEMBER_ID',
      /memberIdBytesMax \(65\) must be at most 64/,
    ],
    [
      'appends longer than a frame carries',
      { replication: { appendEntriesMax: 100_001 } },
      'KV_LIMIT_APPEND_ENTRIES',
      /appendEntriesMax \(100001\) must be at most frameLimits.entriesPerFrameMax/,
    ],
    [
      'anti-entropy batches larger than a message carries',
      { leaderless: { aeRecordsPerMessageMax: 100_001 } },
      'KV_LIMIT_AE_RECORDS',
      /aeRecordsPerMessageMax \(100001\) must be at most/,
    ],
    [
      'anti-entropy digest batches larger than a message carries',
      { leaderless: { aeDigestsPerMessageMax: 1_000_001 } },
      'KV_LIMIT_AE_DIGESTS',
      /aeDigestsPerMessageMax \(1000001\) must be at most/,
    ],
    [
      'a Merkle tree with more leaves than a reply carries',
      { leaderless: { treeDepth: 21 } },
      'KV_LIMIT_AE_LEAVES',
      /depth 21 has 2097152 leaves/,
    ],
    [
      'asking for more leaves than a tree has',
      { leaderless: { aeLeavesPerMessageMax: 2048 } },
      'KV_LIMIT_AE_LEAVES',
      /aeLeavesPerMessageMax \(2048\) must be between 1 and the tree's 1024 leaves/,
    ],
    [
      // Below a peer message by itself, but not with its records' framing beside it.
      'an anti-entropy budget that leaves no room for the framing of its records',
      { leaderless: { aeBytesPerMessageMax: 64 * 1024 * 1024 - 1000 } },
      'KV_LIMIT_AE_BUDGET',
      /aeBytesPerMessageMax \(67107864\) plus 2000 records' framing \(64 bytes each\) must fit leaderlessLimits.messageBytesMax/,
    ],
    [
      'a peer channel buffer smaller than a message',
      { leaderless: { channelBufferBytesMax: 1024 } },
      'KV_LIMIT_PEER_BUFFER',
      /channelBufferBytesMax \(1024\) must be at least leaderlessLimits.messageBytesMax/,
    ],
  ])('refuse %s', (_name, change, code, message) => {
    const problems = constantProblems(withConstants(change))
    expect(problems.map((p) => p.code)).toEqual([code])
    expect(problems[0]?.message).toMatch(message)
    seen.add(code)
    // At load this is what stops the module.
    const error = new LimitsError('the node package limits do not fit each other', problems)
    expect(error.message).toMatch(
      new RegExp(`^the node package limits do not fit each other: ${code}: `),
    )
  })
})

describe('the configured limits, at start-up', () => {
  it('fit with the defaults, in every mode', () => {
    expect(parseConfig([], {}).config.mode).toBe('standalone')
    expect(parseConfig(cluster, {}).config.mode).toBe('single-leader')
    expect(parseConfig(leaderless, {}).config.mode).toBe('leaderless')
  })

  it.each<[string, string[], LimitCode, RegExp]>([
    [
      'a request body smaller than a value',
      ['--request-body-bytes-max', '1KiB'],
      'KV_LIMIT_REQUEST',
      /KV_LIMIT_REQUEST: requestBodyBytesMax \(1024\) must be at least valueBytesMax/,
    ],
    [
      'writes larger than a replication frame',
      [...cluster, '--value-bytes-max', '64MiB', '--request-body-bytes-max', '64MiB'],
      'KV_LIMIT_REPLICATION_FRAME',
      /KV_LIMIT_REPLICATION_FRAME: replication frames must carry the largest write/,
    ],
    [
      'a replication window smaller than one append',
      [
        ...cluster,
        '--replication-inflight-bytes-max',
        '64KiB',
        '--replication-append-bytes-max',
        '1MiB',
      ],
      'KV_LIMIT_REPLICATION_WINDOW',
      /KV_LIMIT_REPLICATION_WINDOW: replicationInflightBytesMax \(65536\) must be at least replicationAppendBytesMax \(1048576\)/,
    ],
    [
      'a write queue smaller than one request',
      ['--write-queue-bytes-max', '1MiB'],
      'KV_LIMIT_WRITE_QUEUE',
      /KV_LIMIT_WRITE_QUEUE: writeQueueBytesMax \(1048576\) must be at least requestBodyBytesMax \(4194304\)/,
    ],
    [
      'a body budget smaller than one request',
      ['--inflight-body-bytes-max', '1MiB'],
      'KV_LIMIT_INFLIGHT_BODY',
      /KV_LIMIT_INFLIGHT_BODY: inflightBodyBytesMax \(1048576\) must be at least requestBodyBytesMax \(4194304\)/,
    ],
    [
      'a record larger than a peer message',
      [...leaderless, '--siblings-max', '100'],
      'KV_LIMIT_RECORD_MESSAGE',
      /KV_LIMIT_RECORD_MESSAGE: siblingsMax \(100\) values of valueBytesMax \(1048576\) bytes must fit in one peer message/,
    ],
    [
      'an anti-entropy budget plus a record larger than a peer message',
      [...leaderless, '--siblings-max', '60'],
      'KV_LIMIT_AE_MESSAGE',
      /KV_LIMIT_AE_MESSAGE: an anti-entropy message .* must fit in one peer message/,
    ],
    [
      'a sibling warning above the cap',
      [...leaderless, '--siblings-warn', '40'],
      'KV_LIMIT_SIBLINGS',
      /KV_LIMIT_SIBLINGS: siblingsWarn \(40\) must be at most siblingsMax \(32\)/,
    ],
  ])('refuse %s', (_name, args, code, message) => {
    const { codes, message: text } = refusal(args)
    expect(codes).toEqual([code])
    expect(text).toMatch(message)
  })

  it('refuse more siblings than a peer decodes', () => {
    const { config } = parseConfig(leaderless, {})
    const peer: PeerLimits = {
      ...peerLimits,
      leaderless: { ...peerLimits.leaderless, siblingsMax: 16 },
    }
    const problems = configLimitProblems(config, nodeConstants, peer)
    expect(problems.map((p) => p.code)).toEqual(['KV_LIMIT_SIBLINGS'])
    expect(problems[0]?.message).toMatch(/siblingsMax \(32\) must be at most 16/)
  })

  it('only check replication and leaderless limits in the modes that use them', () => {
    // Alone, a node may take values no frame could carry, and any window.
    const big = ['--value-bytes-max', '64MiB', '--request-body-bytes-max', '64MiB']
    expect(parseConfig(big, {}).config.valueBytesMax).toBe(64 * 1024 * 1024)
    expect(parseConfig(['--siblings-max', '100'], {}).config.siblingsMax).toBe(100)
  })

  it('report every failed check at once, each with its code', () => {
    const { codes } = refusal([
      ...cluster,
      '--write-queue-bytes-max',
      '1MiB',
      '--inflight-body-bytes-max',
      '1MiB',
    ])
    expect(codes).toEqual(['KV_LIMIT_WRITE_QUEUE', 'KV_LIMIT_INFLIGHT_BODY'])
  })
})

afterAll(() => {
  // Every check has a test that makes it fail.
  expect([...seen].sort()).toEqual([...limitCodes].sort())
})
