/**
 * Merkle trees for leaderless anti-entropy (pure). A replica summarises the keys of one ring
 * range as a fixed-shape tree: the keys are cut into 2^depth leaf buckets by a hash of the key; a leaf's digest combines the (key, version digest) pairs in it, and each
 * inner node combines its two children. Two replicas compare roots, descend only where digests
 * differ, and stream just the keys of the differing leaves.
 *
 * Digests are 32-bit (two independent 32-bit hashes would make collisions between unequal
 * leaves negligible; a collision here only delays repair until the key changes again, it never
 * corrupts data). The combining function is order-independent within a leaf, so the tree does
 * not depend on the order keys were added in.
 */
import { hash32 } from './ring.js'
import { invariant } from './invariant.js'

/** An entry: a key and a digest of its versioned state (equal states, equal digests). */
export interface MerkleEntry {
  key: string
  digest: number
}

/** A hash of the key independent of hash32 (which places it on the ring). */
function leafHash(key: string): number {
  let h = hash32(key) ^ 0x9e3779b9
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d)
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b)
  return (h ^ (h >>> 16)) >>> 0
}

export class MerkleTree {
  readonly depth: number
  /** Heap layout: node i has children 2i+1 and 2i+2; leaves are the last 2^depth nodes. */
  private readonly nodes: Uint32Array

  constructor(depth = 10) {
    invariant(
      Number.isInteger(depth) && depth >= 0 && depth <= 20,
      `depth must be 0 to 20, not ${depth}`,
    )
    this.depth = depth
    this.nodes = new Uint32Array(2 ** (depth + 1) - 1)
  }

  static of(entries: Iterable<MerkleEntry>, depth = 10): MerkleTree {
    const tree = new MerkleTree(depth)
    for (const e of entries) tree.toggle(e)
    tree.rebuild()
    return tree
  }

  /**
   * The leaf bucket of a key: the top bits of a second hash of the key, independent of its
   * ring position, so the tree of a narrow arc (or of a replica set's scattered arcs) still
   * spreads its keys over every leaf.
   */
  leafOf(key: string): number {
    return this.depth === 0 ? 0 : leafHash(key) >>> (32 - this.depth)
  }

  private get firstLeaf(): number {
    return 2 ** this.depth - 1
  }

  /**
   * Adds an entry, or removes it when added again (XOR of an entry hash: order-independent).
   * Call rebuild() after a batch; update() does both for one change.
   */
  private toggle(e: MerkleEntry): void {
    const leaf = this.leafOf(e.key)
    this.nodes[this.firstLeaf + leaf] =
      ((this.nodes[this.firstLeaf + leaf] as number) ^ hash32(`${e.key}\u0000${e.digest}`)) >>> 0
  }

  /**
   * An inner node's digest from its children's: a murmur3-style mix of the two numbers (no
   * string per level: a write updates depth nodes of its tree on every replica), 0 for two
   * empty children, so a tree that held keys and lost them all is again equal to no tree.
   * Members compare roots first and then leaf digests, which are unchanged: a member still
   * combining the older way differs at the root only, and the leaves then show nothing to send.
   */
  private combine(i: number): void {
    const left = this.nodes[2 * i + 1] as number
    const right = this.nodes[2 * i + 2] as number
    if (left === 0 && right === 0) {
      this.nodes[i] = 0
      return
    }
    let h = Math.imul(left ^ 0x9e3779b9, 0x85ebca6b)
    h = Math.imul(h ^ (h >>> 15) ^ right, 0xc2b2ae35)
    h = Math.imul(h ^ (h >>> 13), 0x27d4eb2f)
    this.nodes[i] = (h ^ (h >>> 16)) >>> 0
  }

  private rebuild(): void {
    for (let i = this.firstLeaf - 1; i >= 0; i--) this.combine(i)
  }

  /** A key's digest changed from `before` (undefined: it was absent) to `after` (undefined: gone). */
  update(key: string, before: number | undefined, after: number | undefined): void {
    if (before !== undefined) this.toggle({ key, digest: before })
    if (after !== undefined) this.toggle({ key, digest: after })
    let i = this.firstLeaf + this.leafOf(key)
    while (i > 0) {
      i = Math.floor((i - 1) / 2)
      this.combine(i)
    }
  }

  get root(): number {
    return this.nodes[0] as number
  }

  /** Digest of node i (heap layout), for the exchange protocol. */
  digestAt(i: number): number {
    invariant(i >= 0 && i < this.nodes.length, `no node ${i}`)
    return this.nodes[i] as number
  }

  /**
   * The leaf buckets where this tree and `other` differ, found by descending only into
   * differing subtrees (what two replicas do over the network, one level per round trip).
   */
  differingLeaves(other: { digestAt(i: number): number; depth: number }): number[] {
    invariant(other.depth === this.depth, 'trees of different depths cannot be compared')
    const out: number[] = []
    const visit = (i: number) => {
      if (this.digestAt(i) === other.digestAt(i)) return
      if (i >= this.firstLeaf) {
        out.push(i - this.firstLeaf)
        return
      }
      visit(2 * i + 1)
      visit(2 * i + 2)
    }
    visit(0)
    return out
  }
}
