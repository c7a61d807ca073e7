/**
 * How the nodes a test or benchmark starts are secured. A process test run sets it once
 * (test/support/setup.ts: the run's certificates, TLS and auth on, as shipped); a benchmark
 * passes its profile to each launcher.
 */
export interface NodeSecurity {
  /** The scheme of the nodes' client and peer URLs. */
  scheme: 'http' | 'https'
  /** kv-node flags that secure a node; `cluster` when it has peers. */
  nodeArgs(cluster: boolean): string[]
}

let current: NodeSecurity | null = null

/** Sets the security every launcher uses when it is not given one. */
export function useNodeSecurity(security: NodeSecurity): void {
  current = security
}

/** The security set by useNodeSecurity; fails when none was set. */
export function nodeSecurity(): NodeSecurity {
  if (current === null) {
    throw new Error(
      'no node security set: call useNodeSecurity() first (process tests do it in test/support/setup.ts)',
    )
  }
  return current
}
