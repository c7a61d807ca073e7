// Every fetch in a process test goes over TLS as root, and every node the test kit starts runs
// as shipped, with its certificate from the run's certs (see certs.ts).
import { useNodeSecurity } from '@kvstore/testkit'
import { installRootDispatcher, securityArgs } from './certs.js'

installRootDispatcher()
useNodeSecurity({ scheme: 'https', nodeArgs: () => securityArgs() })
