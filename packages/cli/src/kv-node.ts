#!/usr/bin/env node
import { runNode } from '@kvstore/node'

await runNode(process.argv.slice(2), process.env)
