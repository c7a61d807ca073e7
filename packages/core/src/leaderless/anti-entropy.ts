/**
 * Anti-entropy bookkeeping (pure). Every replica keeps, per replica set it belongs to (the
 * sorted preference list "n1,n2,n4" shared by the keys of some arcs of the ring), a Merkle
 * tree of its keys' state digests and the keys in each leaf. Two members compare the roots of
 * the sets they share, then the leaves of a set whose roots differ, and exchange only the keys
 * of the differing leaves.
 */
import { allTombstones, stateDigest, type VersionedState } from '../conflicts.js'
import { invariant } from '../invariant.js'
import { MerkleTree } from '../merkle.js'
import type { HashRing } from '../ring.js'

/** The replica set a key belongs to: its preference list, sorted, joined by commas. */
export function replicaSetOf(ring: HashRing, key: string, n: number): string {
  return ring.replicaSet(key, n)
}

/** Every replica set of the ring (sorted). */
export function ringReplicaSets(ring: HashRing, n: number): string[] {
  const sets = new Set<string>()
  for (const r of ring.ranges()) sets.add([...ring.preferenceListAt(r.end, n)].sort().join(','))
  return [...sets].sort()
}

/** The replica sets both `a` and `b` belong to. */
export function sharedSets(sets: readonly string[], a: string, b: string): string[] {
  return sets.filter((set) => {
    const members = set.split(',')
    return members.includes(a) && members.includes(b)
  })
}

/** The leaves whose digests differ between two leaf arrays of the same tree shape. */
export function differingLeaves(mine: readonly number[], theirs: readonly number[]): number[] {
  invariant(
    mine.length === theirs.length,
    () => `leaf arrays of different sizes (${mine.length} and ${theirs.length})`,
  )
  const out: number[] = []
  for (let leaf = 0; leaf < mine.length; leaf++) if (mine[leaf] !== theirs[leaf]) out.push(leaf)
  return out
}

/**
 * One member's index of what it holds: per replica set, the Merkle tree and the keys of each
 * leaf; per key, the state digest; and the keys holding only tombstones (candidates for
 * collection). `update` keeps all of it in step with a key's new state.
 */
export class AntiEntropyIndex {
  readonly depth: number
  private readonly trees = new Map<string, MerkleTree>()
  private readonly leafKeys = new Map<string, Map<number, Set<string>>>()
  private readonly digests = new Map<string, number>()
  private readonly tombstones = new Set<string>()

  constructor(depth: number) {
    this.depth = depth
  }

  private treeOf(set: string): MerkleTree {
    let tree = this.trees.get(set)
    if (!tree) {
      tree = new MerkleTree(this.depth)
      this.trees.set(set, tree)
      this.leafKeys.set(set, new Map())
    }
    return tree
  }

  /** A key of replica set `set` now holds `state` (null: nothing). */
  update<V>(set: string, key: string, state: VersionedState<V> | null): void {
    const tree = this.treeOf(set)
    const before = this.digests.get(key)
    const after = state === null ? undefined : stateDigest(state)
    if (before === after) return
    tree.update(key, before, after)
    const leaf = tree.leafOf(key)
    const leaves = this.leafKeys.get(set) as Map<number, Set<string>>
    if (state === null) {
      this.digests.delete(key)
      leaves.get(leaf)?.delete(key)
      this.tombstones.delete(key)
      return
    }
    this.digests.set(key, after as number)
    let keys = leaves.get(leaf)
    if (!keys) leaves.set(leaf, (keys = new Set()))
    keys.add(key)
    if (allTombstones(state)) this.tombstones.add(key)
    else this.tombstones.delete(key)
  }

  /**
   * The ring changed: files every key under the replica set `setOf` names now (the trees are
   * built afresh from the digests kept per key; nothing is read from disk).
   */
  reassign(setOf: (key: string) => string): void {
    const bySet = new Map<string, { key: string; digest: number }[]>()
    for (const [key, digest] of this.digests) {
      const set = setOf(key)
      let entries = bySet.get(set)
      if (entries === undefined) bySet.set(set, (entries = []))
      entries.push({ key, digest })
    }
    this.trees.clear()
    this.leafKeys.clear()
    for (const [set, entries] of bySet) {
      const tree = MerkleTree.of(entries, this.depth)
      this.trees.set(set, tree)
      const leaves = new Map<number, Set<string>>()
      for (const { key } of entries) {
        const leaf = tree.leafOf(key)
        let keys = leaves.get(leaf)
        if (keys === undefined) leaves.set(leaf, (keys = new Set()))
        keys.add(key)
      }
      this.leafKeys.set(set, leaves)
    }
  }

  /** How many keys this member holds, in every set. */
  get size(): number {
    return this.digests.size
  }

  /** This member holds something of `key`. */
  holds(key: string): boolean {
    return this.digests.has(key)
  }

  digestOf(key: string): number | undefined {
    return this.digests.get(key)
  }

  /** The root of a set's tree (0 when this member holds nothing of it). */
  root(set: string): number {
    return this.trees.get(set)?.root ?? 0
  }

  /** The digest of every leaf of a set's tree, in leaf order. */
  leafDigests(set: string): number[] {
    const tree = this.trees.get(set) ?? new MerkleTree(this.depth)
    const first = 2 ** this.depth - 1
    const out: number[] = []
    for (let i = 0; i < 2 ** this.depth; i++) out.push(tree.digestAt(first + i))
    return out
  }

  /** The keys of one leaf of a set (a copy: the caller may change the index meanwhile). */
  keysIn(set: string, leaf: number): string[] {
    return [...(this.leafKeys.get(set)?.get(leaf) ?? [])]
  }

  /** How many keys of a set this member holds. */
  keyCount(set: string): number {
    let keys = 0
    for (const leaf of this.leafKeys.get(set)?.values() ?? []) keys += leaf.size
    return keys
  }

  /** Keys holding only tombstones (a copy). */
  tombstoned(): string[] {
    return [...this.tombstones]
  }
}
