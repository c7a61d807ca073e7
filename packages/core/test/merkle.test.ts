import { MerkleTree, type MerkleEntry } from '../src/merkle.js'

const entries = (n: number, version = (i: number) => i): MerkleEntry[] =>
  Array.from({ length: n }, (_, i) => ({ key: `k/${i}`, digest: version(i) }))

describe('merkle trees for anti-entropy', () => {
  it('summarise equal states equally, whatever order the keys came in', () => {
    const a = MerkleTree.of(entries(2000))
    const b = MerkleTree.of(entries(2000).reverse())
    expect(a.root).toBe(b.root)
    expect(a.differingLeaves(b)).toEqual([])
  })

  it('find exactly the leaves of the keys that differ', () => {
    const a = MerkleTree.of(entries(5000))
    const changed = new Set([17, 2500, 4999])
    const b = MerkleTree.of(entries(5000, (i) => (changed.has(i) ? i + 1 : i)))
    expect(a.root).not.toBe(b.root)
    const leaves = a.differingLeaves(b)
    expect(new Set(leaves)).toEqual(new Set([...changed].map((i) => a.leafOf(`k/${i}`))))
    // A key only one side has counts too.
    const c = MerkleTree.of([...entries(5000), { key: 'extra', digest: 1 }])
    expect(a.differingLeaves(c)).toEqual([a.leafOf('extra')])
  })

  it('updates incrementally to the same tree a rebuild gives', () => {
    const tree = MerkleTree.of(entries(1000))
    tree.update('k/5', 5, 55) // changed
    tree.update('k/6', 6, undefined) // deleted
    tree.update('new', undefined, 7) // created
    const rebuilt = MerkleTree.of([
      ...entries(1000).filter((e) => e.key !== 'k/5' && e.key !== 'k/6'),
      { key: 'k/5', digest: 55 },
      { key: 'new', digest: 7 },
    ])
    expect(tree.root).toBe(rebuilt.root)
    expect(tree.differingLeaves(rebuilt)).toEqual([])
    // And back again.
    tree.update('new', 7, undefined)
    tree.update('k/6', undefined, 6)
    tree.update('k/5', 55, 5)
    expect(tree.root).toBe(MerkleTree.of(entries(1000)).root)
  })

  it('gives an emptied tree the root of no tree (0), and tells a change in any one leaf at the root', () => {
    const tree = new MerkleTree(10)
    tree.update('k', undefined, 1)
    expect(tree.root).not.toBe(0)
    tree.update('k', 1, undefined)
    expect(tree.root).toBe(0)
    // One key in each of many leaves: every one of them moves the root, and no two the same way.
    const roots = new Set<number>()
    for (let i = 0; i < 500; i++) roots.add(MerkleTree.of([{ key: `k/${i}`, digest: 1 }]).root)
    expect(roots.size).toBe(500)
  })

  it('works at depth 0 (one leaf) and refuses mismatched or absurd shapes', () => {
    const a = MerkleTree.of(entries(10), 0)
    const b = MerkleTree.of(
      entries(10, (i) => (i === 3 ? 9 : i)),
      0,
    )
    expect(a.differingLeaves(b)).toEqual([0])
    expect(() => a.differingLeaves(MerkleTree.of(entries(10), 4))).toThrow(/different depths/)
    expect(() => new MerkleTree(21)).toThrow(/depth/)
  })
})
