/** What the RESP front did since the node started (kv_resp_* on /metrics). */
export class RespStats {
  connections = 0
  commands = 0
  errors = 0
  /** Connections closed by a limit, by which: connections, auth-timeout, protocol, output. */
  readonly closed = { connections: 0, authTimeout: 0, protocol: 0, output: 0 }
}
