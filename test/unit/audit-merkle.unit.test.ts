import { assert, describe, it } from "@effect/vitest"
import { createHash, createSecretKey, randomBytes } from "node:crypto"
import { chainMac, GENESIS } from "../../services/audit/chain.ts"
import { checkpointSigner, publicKeyFromHex, verifyCheckpoint } from "../../services/audit/checkpoint.ts"
import { canonicalBytes, columnsOf, type Entry } from "../../services/audit/entry.ts"
import {
  append, consistencyProof, decodeFrontier, EMPTY_FRONTIER, EMPTY_ROOT, encodeFrontier, frontierRoot, inclusionProof, leafHash, nodeHash, rootOf,
  verifyConsistency, verifyInclusion
} from "../../services/audit/merkle.ts"
import { verifyChain } from "../../services/audit/verify.ts"

const leaves = (n: number) => Array.from({ length: n }, (_, i) => leafHash(`leaf ${i}`))

describe("Merkle tree (RFC 9162)", () => {
  it("hashes leaves and nodes with their domain prefixes", () => {
    assert.strictEqual(leafHash("a").toString("hex"), createHash("sha256").update(Buffer.concat([Buffer.from([0]), Buffer.from("a")])).digest("hex"))
    const l = leafHash("l")
    const r = leafHash("r")
    assert.strictEqual(nodeHash(l, r).toString("hex"), createHash("sha256").update(Buffer.concat([Buffer.from([1]), l, r])).digest("hex"))
    assert.strictEqual(rootOf([]).toString("hex"), createHash("sha256").digest("hex"))
  })

  it("splits at the largest power of two below n", () => {
    const [a, b, c] = leaves(3)
    assert.isTrue(rootOf([a!, b!, c!]).equals(nodeHash(nodeHash(a!, b!), c!)))
  })

  it("the frontier gives the same root as the whole tree at every size, and survives encoding", () => {
    const ls = leaves(70)
    let f = EMPTY_FRONTIER
    assert.isTrue(frontierRoot(f).equals(EMPTY_ROOT))
    for (let n = 1; n <= ls.length; n++) {
      f = append(f, [ls[n - 1]!])
      assert.isTrue(frontierRoot(f).equals(rootOf(ls.slice(0, n))), `size ${n}`)
      assert.isTrue(frontierRoot(decodeFrontier(n, encodeFrontier(f))).equals(frontierRoot(f)))
    }
    assert.throws(() => decodeFrontier(3, encodeFrontier(append(EMPTY_FRONTIER, ls.slice(0, 4)))))
  })

  it("inclusion proofs verify for every leaf of every size up to 33, and fail when forged", () => {
    const ls = leaves(33)
    for (let n = 1; n <= ls.length; n++) {
      const root = rootOf(ls.slice(0, n))
      for (let m = 0; m < n; m++) {
        const proof = inclusionProof(ls, m, n)
        assert.isTrue(verifyInclusion(ls[m]!, m, n, proof, root), `leaf ${m} of ${n}`)
        assert.isFalse(verifyInclusion(leafHash("forged"), m, n, proof, root))
        if (proof.length > 0) {
          const forged = proof.map((p, i) => (i === 0 ? leafHash("x") : p))
          assert.isFalse(verifyInclusion(ls[m]!, m, n, forged, root))
        }
        if (n > 1) assert.isFalse(verifyInclusion(ls[m]!, (m + 1) % n, n, proof, root), `wrong index ${m} of ${n}`)
      }
    }
  })

  it("consistency proofs verify between every pair of sizes up to 33, and fail for a rewritten prefix", () => {
    const ls = leaves(33)
    for (let n = 1; n <= ls.length; n++) {
      for (let m = 1; m <= n; m++) {
        const proof = consistencyProof(ls, m, n)
        const oldRoot = rootOf(ls.slice(0, m))
        const newRoot = rootOf(ls.slice(0, n))
        assert.isTrue(verifyConsistency(m, n, oldRoot, newRoot, proof), `${m} → ${n}`)
        if (m < n) {
          const rewritten = [...ls.slice(0, n)]
          rewritten[m - 1] = leafHash("rewritten")
          assert.isFalse(verifyConsistency(m, n, oldRoot, rootOf(rewritten), consistencyProof(rewritten, m, n)), `rewritten ${m} → ${n}`)
        }
      }
    }
  })
})

describe("entries, MACs and checkpoints", () => {
  it("canonical bytes do not depend on key order, and the columns come from them", () => {
    const body = { id: "01", zone_id: "z", source: "sts", kind: "token_exchange", decision: "allow", request_id: "r1", occurred_at: "2026-01-01T00:00:00.000Z" }
    const a: Entry = { v: 1, id: "01", chain: "z", origin: "record", stream: "audit", body }
    const b: Entry = { body: Object.fromEntries(Object.entries(body).reverse()), stream: "audit", origin: "record", chain: "z", id: "01", v: 1 }
    assert.isTrue(canonicalBytes(a).equals(canonicalBytes(b)))
    assert.strictEqual(columnsOf(a).request_id, "r1")
    assert.strictEqual(columnsOf(a).decision, "allow")
  })

  it("a MAC binds the chain, the position, the previous MAC and the bytes", () => {
    const key = createSecretKey(randomBytes(32))
    const bytes = Buffer.from("x")
    const base = chainMac(key, "z", 1, GENESIS, bytes)
    assert.isFalse(base.equals(chainMac(key, "z2", 1, GENESIS, bytes)))
    assert.isFalse(base.equals(chainMac(key, "z", 2, GENESIS, bytes)))
    assert.isFalse(base.equals(chainMac(key, "z", 1, Buffer.alloc(32, 1), bytes)))
    assert.isFalse(base.equals(chainMac(key, "z", 1, GENESIS, Buffer.from("y"))))
  })

  it("a checkpoint verifies with the public half only, and not once any field changes", () => {
    const signer = checkpointSigner(randomBytes(32))
    const pub = publicKeyFromHex(signer.publicKeyHex)
    const c = signer.sign({ zone: "z", treeSize: 5, root: leafHash("r"), signedAt: "2026-01-01T00:00:00.000Z" })
    assert.isTrue(verifyCheckpoint(pub, c))
    assert.isFalse(verifyCheckpoint(pub, { ...c, treeSize: 4 }))
    assert.isFalse(verifyCheckpoint(pub, { ...c, zone: "y" }))
    assert.isFalse(verifyCheckpoint(publicKeyFromHex(checkpointSigner(randomBytes(32)).publicKeyHex), c))
  })

  it("verifyChain accepts a well-formed chain and names a cut tail", async () => {
    const key = createSecretKey(randomBytes(32))
    const signer = checkpointSigner(randomBytes(32))
    const rows = []
    let prev: Buffer = GENESIS
    let f = EMPTY_FRONTIER
    for (let seq = 1; seq <= 5; seq++) {
      const entry: Entry = { v: 1, id: `id${seq}`, chain: "z", origin: "record", stream: "audit", body: { id: `id${seq}` } }
      const canonical = canonicalBytes(entry)
      const mac = chainMac(key, "z", seq, prev, canonical)
      rows.push({ seq, id: `id${seq}`, canonical, prevMac: prev, mac, leafHash: leafHash(canonical) })
      f = append(f, [leafHash(canonical)])
      prev = mac
    }
    const cp = signer.sign({ zone: "z", treeSize: 5, root: frontierRoot(f), signedAt: "2026-01-01T00:00:00.000Z" })
    const publicKey = publicKeyFromHex(signer.publicKeyHex)
    const ok = await verifyChain({ chain: "z", rows, checkpoints: [cp], hmacKey: key, publicKey })
    assert.isTrue(ok.ok)
    assert.strictEqual(ok.checkpointsVerified, 1)
    const cut = await verifyChain({ chain: "z", rows: rows.slice(0, 3), checkpoints: [cp], hmacKey: key, publicKey })
    assert.isFalse(cut.ok)
    assert.strictEqual(cut.firstBad?.seq, 4)
  })
})
