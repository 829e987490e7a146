// End-to-end encryption between a user on server A and a user on server B, both driven by
// matrix-js-sdk with its Rust crypto (in memory, no IndexedDB):
// - two encrypted conversations, one in a room created on each server: every message
//   decrypts on the other side (no decryption failure);
// - cross-signing bootstrapped by both users; each reads the other's device verification
//   status (signed by its owner's self-signing key);
// - a key backup made by A's first device; A's second device, logging in later, restores
//   the room keys from it and decrypts the earlier messages;
// - a device deleted on each server disappears from the other user's view of the device
//   list (m.device_list_update over federation);
// - each server restarted in turn (through the test's control URL): the conversations
//   go on and decrypt.
import { sdk, login, startAndWait, waitFor, stopAll } from "../lib/harness.mjs";

const LONG = 90000;

async function cryptoClient(account, deviceName) {
  const client = await login(account.url, account.user, account.password, { start: false, deviceName });
  await client.initRustCrypto({ useIndexedDB: false });
  await startAndWait(client, {}, LONG);
  return client;
}

function authFor(account) {
  return {
    type: "m.login.password",
    identifier: { type: "m.id.user", user: account.user },
    password: account.password,
  };
}

/** Run a request needing User-Interactive Authentication with the account's password. */
async function withUia(account, makeRequest) {
  try {
    return await makeRequest(null);
  } catch (e) {
    const session = e && e.data && e.data.session;
    if (!session) throw e;
    return await makeRequest({ ...authFor(account), session });
  }
}

/** Decrypt what can be decrypted in a room's live timeline; returns
 * `{bodies, failures}`: the bodies of decrypted m.room.message events, and the ids of
 * events that failed to decrypt. */
async function decrypted(client, roomId, retry = false) {
  const room = client.getRoom(roomId);
  if (!room) return { bodies: [], failures: [] };
  const bodies = [];
  const failures = [];
  for (const ev of room.getLiveTimeline().getEvents()) {
    if (!ev.isEncrypted()) continue;
    if (ev.isDecryptionFailure() && retry) {
      await ev.attemptDecryption(client.getCrypto(), { isRetry: true });
    } else if (ev.shouldAttemptDecryption()) {
      await client.decryptEventIfNeeded(ev);
    }
    if (ev.isDecryptionFailure()) failures.push(ev.getId());
    else if (ev.getType() === "m.room.message") bodies.push(ev.getContent().body);
  }
  return { bodies, failures };
}

async function waitDecrypted(client, roomId, body, what, retry = false) {
  let last;
  try {
    await waitFor(async () => {
      last = await decrypted(client, roomId, retry);
      return last.bodies.includes(body);
    }, what, LONG, 250);
  } catch (e) {
    throw new Error(`${e.message}; decrypted: ${JSON.stringify(last)}`);
  }
  return last;
}

async function encryptedRoom(host, hostAccount, guest, guestAccount) {
  const { room_id: roomId } = await host.createRoom({
    preset: "private_chat",
    invite: [guest.getUserId()],
    initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
  });
  await waitFor(() => guest.getRoom(roomId) && guest.getRoom(roomId).getMyMembership() === "invite", "the invite", LONG);
  await guest.joinRoom(roomId, { viaServers: [hostAccount.serverName] });
  await waitFor(() => {
    const m = host.getRoom(roomId) && host.getRoom(roomId).getMember(guest.getUserId());
    return m && m.membership === "join";
  }, "the host to see the join", LONG);
  await waitFor(() => guest.getRoom(roomId) && guest.getRoom(roomId).hasEncryptionStateEvent(), "the guest to see encryption", LONG);
  return roomId;
}

/** Send, retrying while the server is coming back from a restart (the sdk's pooled
 * connection to the old process fails once). */
async function send(client, roomId, body) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await client.sendTextMessage(roomId, body);
    } catch (e) {
      if (attempt >= 20 || !(e && e.name === "ConnectionError")) throw e;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

async function exchange(ca, cb, roomId, tag) {
  const fromA = `${tag}: hello from a`;
  const fromB = `${tag}: hello from b`;
  await send(ca, roomId, fromA);
  await waitDecrypted(cb, roomId, fromA, `b to decrypt "${fromA}"`);
  await send(cb, roomId, fromB);
  await waitDecrypted(ca, roomId, fromB, `a to decrypt "${fromB}"`);
  return [fromA, fromB];
}

async function deviceIds(client, userId) {
  const map = await client.getCrypto().getUserDeviceInfo([userId], true);
  const devices = map.get(userId);
  return devices ? [...devices.keys()].sort() : [];
}

async function control(url, action) {
  const resp = await fetch(`${url}/${action}`, { method: "POST" });
  if (!resp.ok) throw new Error(`control ${action}: HTTP ${resp.status} ${await resp.text()}`);
}

export default async function ({ a, b, controlUrl }) {
  const out = { steps: [] };
  const step = (name, data) => out.steps.push({ name, ...(data || {}) });
  const ca = await cryptoClient(a, "a's first device");
  const cb = await cryptoClient(b, "b's first device");
  const clients = [ca, cb];
  try {
    // Two encrypted conversations, one room on each server.
    const roomA = await encryptedRoom(ca, a, cb, b);
    const roomB = await encryptedRoom(cb, b, ca, a);
    step("conversation in the room on a", { messages: await exchange(ca, cb, roomA, "room on a") });
    step("conversation in the room on b", { messages: await exchange(ca, cb, roomB, "room on b") });

    // Cross-signing on both sides; each reads the other's device status.
    for (const [client, account] of [[ca, a], [cb, b]]) {
      await client.getCrypto().bootstrapCrossSigning({
        authUploadDeviceSigningKeys: (makeRequest) => withUia(account, makeRequest),
      });
    }
    const statusOf = async (reader, userId, deviceId) => {
      await reader.getCrypto().getUserDeviceInfo([userId], true);
      const st = await reader.getCrypto().getDeviceVerificationStatus(userId, deviceId);
      return st && st.signedByOwner ? st : null;
    };
    const aSeesB = await waitFor(() => statusOf(ca, cb.getUserId(), cb.getDeviceId()), "a to see b's device signed by b", LONG, 500);
    const bSeesA = await waitFor(() => statusOf(cb, ca.getUserId(), ca.getDeviceId()), "b to see a's device signed by a", LONG, 500);
    step("cross-signing", {
      aSeesB: { signedByOwner: aSeesB.signedByOwner, crossSigningVerified: aSeesB.crossSigningVerified },
      bSeesA: { signedByOwner: bSeesA.signedByOwner, crossSigningVerified: bSeesA.crossSigningVerified },
      aHasKeysOfB: await ca.getCrypto().userHasCrossSigningKeys(cb.getUserId(), true),
      bHasKeysOfA: await cb.getCrypto().userHasCrossSigningKeys(ca.getUserId(), true),
    });

    // Key backup by a's first device; a second device restores from it.
    await ca.getCrypto().resetKeyBackup();
    const version = await waitFor(() => ca.getCrypto().getActiveSessionBackupVersion(), "the backup to be active", LONG);
    await waitFor(async () => {
      const info = await ca.http.authedRequest("GET", `/room_keys/version/${version}`);
      return info.count >= 2 ? info : null;
    }, "a's room keys in the backup", LONG, 500);
    const backupKey = await ca.getCrypto().getSessionBackupPrivateKey();
    const ca2 = await cryptoClient(a, "a's second device");
    clients.push(ca2);
    await ca2.getCrypto().storeSessionBackupPrivateKey(backupKey, version);
    const restored = await ca2.getCrypto().restoreKeyBackup();
    const earlier = `room on a: hello from b`;
    const seen = await waitDecrypted(ca2, roomA, earlier, "a's second device to decrypt an earlier message", true);
    step("second device restored from the backup", { version, restored, bodies: seen.bodies });

    // Device deletion on each server, seen from the other.
    const aDevice2 = ca2.getDeviceId();
    await waitFor(async () => (await deviceIds(cb, a.userId || ca.getUserId())).includes(aDevice2), "b to see a's second device", LONG, 500);
    ca2.stopClient();
    await withUia(a, (auth) => ca.deleteDevice(aDevice2, auth || undefined));
    await waitFor(async () => !(await deviceIds(cb, ca.getUserId())).includes(aDevice2), "b to see a's second device deleted", LONG, 500);
    const cb2 = await cryptoClient(b, "b's second device");
    clients.push(cb2);
    const bDevice2 = cb2.getDeviceId();
    await waitFor(async () => (await deviceIds(ca, cb.getUserId())).includes(bDevice2), "a to see b's second device", LONG, 500);
    cb2.stopClient();
    await withUia(b, (auth) => cb.deleteDevice(bDevice2, auth || undefined));
    await waitFor(async () => !(await deviceIds(ca, cb.getUserId())).includes(bDevice2), "a to see b's second device deleted", LONG, 500);
    step("deleted devices seen across", {
      aDevicesSeenByB: await deviceIds(cb, ca.getUserId()),
      bDevicesSeenByA: await deviceIds(ca, cb.getUserId()),
    });

    // Each server restarted in turn; the conversations go on.
    if (controlUrl) {
      for (const server of ["a", "b"]) {
        await control(controlUrl, `restart/${server}`);
        step(`after restarting ${server}`, {
          roomA: await exchange(ca, cb, roomA, `room on a, ${server} restarted`),
          roomB: await exchange(ca, cb, roomB, `room on b, ${server} restarted`),
        });
      }
    }

    // Nothing anywhere failed to decrypt.
    out.failures = {
      a: [...(await decrypted(ca, roomA, true)).failures, ...(await decrypted(ca, roomB, true)).failures],
      b: [...(await decrypted(cb, roomA, true)).failures, ...(await decrypted(cb, roomB, true)).failures],
    };
    out.aBodies = [...(await decrypted(ca, roomA)).bodies, ...(await decrypted(ca, roomB)).bodies];
    out.bBodies = [...(await decrypted(cb, roomA)).bodies, ...(await decrypted(cb, roomB)).bodies];
    return out;
  } finally {
    stopAll(...clients);
  }
}
