import { readdir, readFile } from 'node:fs/promises'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ConfigError, configSpec, configTableMarkdown, parseConfig } from '../src/index.js'
import { clusterOf, unsafeOptionsOn } from '../src/config.js'
import { coreConfigOf } from '../src/cluster/core-setup.js'

const root = fileURLToPath(new URL('../../..', import.meta.url))
const plainMembers =
  'n1@http://127.0.0.1:7001@http://127.0.0.1:7101,n2@http://127.0.0.1:7002@http://127.0.0.1:7102'
const singleLeader = ['--members', plainMembers, '--unsafe-plaintext-peers']

describe('unsafe switches', () => {
  it('are rows of the config table, named and described as unsafe', () => {
    const unsafe = configSpec.filter((spec) => spec.unsafe === true)
    expect(unsafe.map((spec) => spec.key)).toEqual([
      'unsafePlaintextPeers',
      'unsafeNoFencing',
      'unsafeConcurrentMembershipChanges',
      'unsafeShardMoveWithoutFence',
      'unsafeRegionSkipConflictRecord',
      'unsafeOutboxApplyTwice',
      'unsafeWatchApplied',
      'unsafeWatchSkipOnResume',
    ])
    for (const spec of configSpec) {
      const named = spec.key.startsWith('unsafe')
      expect([spec.key, spec.unsafe === true]).toEqual([spec.key, named])
      if (!named) continue
      expect(spec.flag).toMatch(/^--unsafe-/)
      expect(spec.env).toMatch(/^KV_UNSAFE_/)
      expect(spec.kind).toBe('boolean')
      expect(spec.default).toBe(false)
      expect(spec.description).toMatch(/^UNSAFE, for /)
    }
  })

  it('are marked in the docs table', () => {
    const rows = configTableMarkdown().split('\n')
    for (const spec of configSpec) {
      const row = rows.find((r) => r.startsWith(`| \`${spec.key}\` |`))
      expect(row).toBeDefined()
      expect(row?.includes('| **UNSAFE**, for ')).toBe(spec.unsafe === true)
    }
  })

  it('take KV_UNSAFE_NO_FENCING as before, and are off by default', () => {
    expect(parseConfig(singleLeader, {}).config.unsafeNoFencing).toBe(false)
    const { config } = parseConfig(singleLeader, { KV_UNSAFE_NO_FENCING: '1' })
    expect(config.unsafeNoFencing).toBe(true)
    expect(unsafeOptionsOn(config).map((spec) => spec.key)).toEqual([
      'unsafePlaintextPeers',
      'unsafeNoFencing',
    ])
    expect(parseConfig([...singleLeader, '--unsafe-no-fencing'], {}).config.unsafeNoFencing).toBe(
      true,
    )
    expect(unsafeOptionsOn(parseConfig([], {}).config)).toEqual([])
  })

  it('take KV_UNSAFE_CONCURRENT_MEMBERSHIP_CHANGES, off by default, single-leader mode only', () => {
    const key = 'unsafeConcurrentMembershipChanges'
    expect(parseConfig(singleLeader, {}).config[key]).toBe(false)
    const env = { KV_UNSAFE_CONCURRENT_MEMBERSHIP_CHANGES: '1' }
    expect(parseConfig(singleLeader, env).config[key]).toBe(true)
    expect(
      parseConfig([...singleLeader, '--unsafe-concurrent-membership-changes'], {}).config[key],
    ).toBe(true)
    expect(() => parseConfig([...singleLeader, '--mode', 'leaderless'], env)).toThrow(
      /--unsafe-concurrent-membership-changes needs --mode single-leader/,
    )
    // It reaches the core as its unsafe switch, and nothing else does.
    const core = (extra: Record<string, string>) => {
      const { config } = parseConfig([...singleLeader, '--id', 'n1'], extra)
      return coreConfigOf(config, clusterOf(config), {
        unsafeNoFencing: config.unsafeNoFencing,
        makeNoop: () => new Uint8Array(),
      }).unsafe
    }
    expect(core({})).toBeUndefined()
    expect(core(env)).toEqual({ concurrentMembershipChanges: true })
    expect(core({ ...env, KV_UNSAFE_NO_FENCING: '1' })).toEqual({
      skipCheckQuorum: true,
      concurrentMembershipChanges: true,
    })
  })

  it('refuse --unsafe-no-fencing outside single-leader mode', () => {
    for (const args of [[], [...singleLeader, '--mode', 'leaderless']]) {
      expect(() => parseConfig(args, { KV_UNSAFE_NO_FENCING: '1' })).toThrow(ConfigError)
      expect(() => parseConfig(args, { KV_UNSAFE_NO_FENCING: '1' })).toThrow(
        /--unsafe-no-fencing needs --mode single-leader/,
      )
    }
  })
})

/** Files under `dir` ending in .ts. */
async function sources(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true })
  return entries
    .filter((e) => e.isFile() && e.name.endsWith('.ts'))
    .map((e) => join(e.parentPath, e.name))
}

describe('the config table lists every option', () => {
  /**
   * Where the shipped server packages may read the environment. Every other switch is a row
   * of the config table, read by parseConfig from the `env` it is given.
   */
  const allowed: string[] = []

  it('so no server source reads process.env', async () => {
    const readers: string[] = []
    for (const pkg of ['protocol', 'storage', 'core', 'node']) {
      for (const file of await sources(join(root, 'packages', pkg, 'src'))) {
        if (/process\.env\b/.test(await readFile(file, 'utf8'))) {
          readers.push(relative(root, file).split('\\').join('/'))
        }
      }
    }
    expect(readers.sort()).toEqual(allowed)
  })
})

describe('region flags', () => {
  it('go together, need single-leader mode and a valid id, and the unsafe switch needs them', () => {
    const regionArgs = ['--region', 'us', '--regions', '/nonexistent/regions.json']
    expect(parseConfig([...singleLeader, ...regionArgs], {}).config.region).toBe('us')
    expect(() => parseConfig([...singleLeader, '--region', 'us'], {})).toThrow(/go together/)
    expect(() =>
      parseConfig([...singleLeader, '--region', 'US', '--regions', '/x.json'], {}),
    ).toThrow(/not a region id/)
    expect(() => parseConfig([...singleLeader, '--mode', 'leaderless', ...regionArgs], {})).toThrow(
      /need single-leader mode/,
    )
    expect(() =>
      parseConfig([...singleLeader, '--unsafe-region-skip-conflict-record'], {}),
    ).toThrow(/needs --region/)
    const { config } = parseConfig(
      [...singleLeader, ...regionArgs, '--unsafe-region-skip-conflict-record'],
      {},
    )
    expect(unsafeOptionsOn(config).map((spec) => spec.key)).toContain(
      'unsafeRegionSkipConflictRecord',
    )
  })
})
