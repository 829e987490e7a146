// A small chat page of our own on matrix-js-sdk (the SDK under Element Web) with its Rust
// crypto (@matrix-org/matrix-sdk-crypto-wasm, the crypto Element Web ships), for what
// Hydrogen does not show: typing notifications and other people's read receipts. It keeps
// its crypto store in the browser's IndexedDB like Element does.
//
// What it shows, for the tests to read from the DOM:
// - #status[data-state]: the sync state (PREPARED, SYNCING, ERROR, ...);
// - #rooms li[data-room-id][data-membership]: the rooms, invites with an Accept button;
// - #timeline li.event[data-event-id][data-sender][data-type]: the open room's timeline,
//   with .body; an event that cannot be decrypted gets the class "utd" and the body
//   "Unable to decrypt"; .read-by lists the users whose read receipt is at that event;
// - #typing[data-users]: who is typing in the open room.
// The composer sends typing notifications while typing and the message on Enter; an
// open room sends a read receipt for the newest event of someone else, as Element does.
import * as sdk from "matrix-js-sdk";

const $ = (id) => document.getElementById(id);
let client = null;
let openRoomId = null;
let renderTimer = null;
let lastReceiptSent = null;
let typingSent = false;

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text || state;
}

function scheduleRender() {
  if (renderTimer === null) renderTimer = setTimeout(render, 50);
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function renderRooms() {
  const list = $("rooms");
  list.replaceChildren();
  for (const room of client.getRooms()) {
    const membership = room.getMyMembership();
    if (membership !== "join" && membership !== "invite") continue;
    const li = el("li", { dataset: { roomId: room.roomId, membership } });
    li.append(el("a", { href: "#", textContent: room.name || room.roomId, onclick: (e) => { e.preventDefault(); openRoom(room.roomId); } }));
    if (membership === "invite") {
      li.append(" ", el("button", { className: "accept", textContent: "Accept", onclick: () => acceptInvite(room.roomId) }));
    }
    list.append(li);
  }
}

function bodyOf(ev) {
  if (ev.isDecryptionFailure()) return "Unable to decrypt";
  if (ev.isBeingDecrypted() || ev.shouldAttemptDecryption()) return "Decrypting…";
  const content = ev.getContent();
  if (ev.getType() === "m.room.message") return content.body;
  if (ev.getType() === "m.room.member") return `${ev.getStateKey()} ${content.membership}`;
  return ev.getType();
}

function renderTimeline() {
  const room = openRoomId && client.getRoom(openRoomId);
  const list = $("timeline");
  list.replaceChildren();
  $("typing").textContent = "";
  $("typing").dataset.users = "";
  if (!room) return;
  $("room-name").textContent = room.name;
  const events = room.getLiveTimeline().getEvents();
  for (const ev of events) {
    const utd = ev.isDecryptionFailure();
    const readBy = room.getUsersReadUpTo(ev).filter((u) => u !== ev.getSender() && u !== client.getUserId());
    const li = el(
      "li",
      {
        className: "event" + (utd ? " utd" : ""),
        dataset: { eventId: ev.getId() || "", sender: ev.getSender() || "", type: ev.getType(), encrypted: ev.isEncrypted() ? "1" : "" },
      },
      el("span", { className: "sender", textContent: ev.sender ? ev.sender.name : ev.getSender() }),
      el("span", { className: "body", textContent: bodyOf(ev) }),
    );
    if (readBy.length) {
      li.append(el("span", { className: "read-by", textContent: "read by " + readBy.join(", "), dataset: { users: readBy.join(" ") } }));
    }
    list.append(li);
  }
  list.scrollTop = list.scrollHeight;
  const typing = room.getMembers().filter((m) => m.typing && m.userId !== client.getUserId());
  if (typing.length) {
    $("typing").textContent = typing.map((m) => m.name).join(", ") + (typing.length > 1 ? " are" : " is") + " typing…";
    $("typing").dataset.users = typing.map((m) => m.userId).join(" ");
  }
  // A read receipt for the newest event of someone else, once it is shown.
  const newest = [...events].reverse().find((ev) => ev.getSender() !== client.getUserId() && ev.getId() && !ev.getId().startsWith("~"));
  if (newest && lastReceiptSent !== newest.getId() && document.visibilityState === "visible") {
    lastReceiptSent = newest.getId();
    client.sendReadReceipt(newest).catch((e) => console.warn("read receipt", e));
  }
}

function render() {
  renderTimer = null;
  if (!client) return;
  renderRooms();
  renderTimeline();
}

function openRoom(roomId) {
  openRoomId = roomId;
  lastReceiptSent = null;
  document.body.dataset.room = roomId;
  $("composer").disabled = false;
  scheduleRender();
}

async function acceptInvite(roomId) {
  await client.joinRoom(roomId);
  openRoom(roomId);
}

async function login(event) {
  event.preventDefault();
  const baseUrl = $("hs").value.replace(/\/+$/, "");
  setStatus("logging-in");
  try {
    const tmp = sdk.createClient({ baseUrl });
    const resp = await tmp.login("m.login.password", {
      identifier: { type: "m.id.user", user: $("user").value },
      password: $("password").value,
      initial_device_display_name: "fedserver browser test (js-sdk page)",
    });
    client = sdk.createClient({ baseUrl, accessToken: resp.access_token, userId: resp.user_id, deviceId: resp.device_id });
    await client.initRustCrypto();
    client.on(sdk.ClientEvent.Sync, (state) => { setStatus(state); scheduleRender(); });
    client.on(sdk.ClientEvent.Room, scheduleRender);
    client.on(sdk.RoomEvent.Timeline, scheduleRender);
    client.on(sdk.RoomEvent.Receipt, scheduleRender);
    client.on(sdk.RoomEvent.MyMembership, scheduleRender);
    client.on(sdk.RoomEvent.Name, scheduleRender);
    client.on(sdk.RoomMemberEvent.Typing, scheduleRender);
    client.on(sdk.MatrixEventEvent.Decrypted, scheduleRender);
    $("login").hidden = true;
    $("new-room").hidden = false;
    document.body.dataset.userId = resp.user_id;
    await client.startClient({ initialSyncLimit: 30 });
  } catch (e) {
    setStatus("login-failed", "login failed: " + e);
    throw e;
  }
}

async function createRoom(event) {
  event.preventDefault();
  const invite = $("new-room-invite").value.trim();
  const options = { name: $("new-room-name").value, preset: "private_chat", invite: invite ? [invite] : [], initial_state: [] };
  if ($("new-room-encrypted").checked) {
    options.initial_state.push({ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } });
  }
  const { room_id: roomId } = await client.createRoom(options);
  openRoom(roomId);
}

async function onComposerKey(event) {
  if (event.key !== "Enter" || !openRoomId) return;
  const body = $("composer").value;
  if (!body) return;
  $("composer").value = "";
  typingSent = false;
  await client.sendTyping(openRoomId, false, 0).catch(() => {});
  await client.sendTextMessage(openRoomId, body);
}

function onComposerInput() {
  if (!openRoomId) return;
  const typing = $("composer").value.length > 0;
  if (typing !== typingSent) {
    typingSent = typing;
    client.sendTyping(openRoomId, typing, 30000).catch((e) => console.warn("typing", e));
  }
}

$("login").addEventListener("submit", (e) => login(e).catch((err) => console.error(err)));
$("new-room").addEventListener("submit", (e) => createRoom(e).catch((err) => console.error(err)));
$("composer").addEventListener("keydown", (e) => onComposerKey(e).catch((err) => console.error(err)));
$("composer").addEventListener("input", onComposerInput);
document.body.dataset.ready = "1";
