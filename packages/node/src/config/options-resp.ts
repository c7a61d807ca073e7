/**
 * The option table's rows for the RESP front (node/src/resp): the port redis-cli, redis-benchmark
 * and Redis client libraries speak to, and the limits of each of its connections.
 */
import { KiB, MiB, type OptionSpec } from './types.js'

export const respOptions: readonly OptionSpec[] = [
  {
    key: 'respPort',
    flag: '--resp-port',
    env: 'KV_RESP_PORT',
    kind: 'integer',
    default: -1,
    min: -1,
    max: 65535,
    group: 'node',
    description:
      "Port of the RESP front (the Redis protocol, RESP2 and RESP3) on --host; -1 turns it off. It speaks TLS with the client port's certificate when the node has one, and asks for AUTH when auth is on. Single-leader and standalone modes only.",
  },
  {
    key: 'respConnectionsMax',
    flag: '--resp-connections-max',
    env: 'KV_RESP_CONNECTIONS_MAX',
    kind: 'integer',
    default: 10_000,
    min: 1,
    max: 1_000_000,
    group: 'limits',
    description:
      'Most RESP connections this node holds at once; past it a new one gets KV_ERR_RESP_CONNECTIONS_TOO_MANY and is closed.',
  },
  {
    key: 'respPendingRepliesMax',
    flag: '--resp-pending-replies-max',
    env: 'KV_RESP_PENDING_REPLIES_MAX',
    kind: 'integer',
    default: 1024,
    min: 1,
    max: 1_000_000,
    group: 'limits',
    description:
      'Most pipelined commands of one RESP connection that run or wait for their reply at once; past it the node stops reading that connection until replies go out (back-pressure, nothing is dropped).',
  },
  {
    key: 'respOutputBytesMax',
    flag: '--resp-output-bytes-max',
    env: 'KV_RESP_OUTPUT_BYTES_MAX',
    kind: 'bytes',
    default: 64 * MiB,
    min: 64 * KiB,
    max: 4096 * MiB,
    group: 'limits',
    description:
      "Most bytes of replies waiting for one RESP client to read them; past it the connection gets KV_ERR_RESP_OUTPUT_TOO_LARGE and is closed (as Redis's client-output-buffer-limit).",
  },
  {
    key: 'respCommandBytesMax',
    flag: '--resp-command-bytes-max',
    env: 'KV_RESP_COMMAND_BYTES_MAX',
    kind: 'bytes',
    default: 8 * MiB,
    min: 4 * KiB,
    max: 1024 * MiB,
    group: 'limits',
    description:
      'Most bytes of one RESP command as it is read (every argument, with framing); a longer one, or a longer inline command line, gets KV_ERR_RESP_PROTOCOL and the connection is closed. Values are still held to --value-bytes-max.',
  },
  {
    key: 'respArgsMax',
    flag: '--resp-args-max',
    env: 'KV_RESP_ARGS_MAX',
    kind: 'integer',
    default: 4096,
    min: 4,
    max: 1_000_000,
    group: 'limits',
    description:
      'Most arguments of one RESP command (the length of its array); more gets KV_ERR_RESP_PROTOCOL and the connection is closed. MSET and MGET are also held to --batch-ops-max keys.',
  },
  {
    key: 'respPendingBytesMax',
    flag: '--resp-pending-bytes-max',
    env: 'KV_RESP_PENDING_BYTES_MAX',
    kind: 'bytes',
    default: 16 * MiB,
    min: 64 * KiB,
    max: 4096 * MiB,
    group: 'limits',
    description:
      'Most bytes of pipelined commands (their arguments) of one RESP connection that run or wait for their reply at once; past it the node stops reading that connection until replies go out (back-pressure, nothing is dropped). With respConnectionsMax it bounds what RESP clients can make a node hold.',
  },
  {
    key: 'respAuthTimeoutMs',
    flag: '--resp-auth-timeout-ms',
    env: 'KV_RESP_AUTH_TIMEOUT_MS',
    kind: 'integer',
    default: 10_000,
    min: 100,
    max: 3_600_000,
    group: 'limits',
    description:
      'With auth on, a RESP connection that has not authenticated (AUTH, HELLO AUTH or a client certificate naming a user) this long after it connected gets -NOAUTH and is closed, so idle strangers cannot hold the connection slots.',
  },
]
