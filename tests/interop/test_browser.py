"""Real web clients in headless Chromium against fedserver and a real Synapse (issue 19).

- Hydrogen (hydrogen-view-sdk 0.3.1: the complete web client, with olm for encryption and
  its service worker for authenticated media), driven through its own UI: login, create
  and join rooms, timeline, scrolling back, attachments, direct chats, invites.
- Our chat page on matrix-js-sdk 37.5.0 with its Rust crypto (what Element Web runs), for
  what Hydrogen does not show: typing notifications and other people's read receipts.

Each scenario ends with screenshots (tests/browserclient.py :func:`screenshot_dir`) and
assertions on the DOM, and fails on any error answer (400 and above) a page received that
is not in :data:`tests.browserclient.ALLOWED`. The servers are child processes started
once for the module (one Synapse, one fedserver); the browser is started once for the test
process and each user gets a fresh browser context.
"""

from __future__ import annotations

import io
import itertools
import os
import tempfile
from typing import Any
from urllib.parse import quote

from twisted.trial.unittest import TestCase

from tests.browserclient import Browser, Tab, wait_dom
from tests.interop.peers import PeerPair, wait_until

_pair = PeerPair("interop-browser-")
_names = (f"br{i}" for i in itertools.count())

#: Seconds a page may take to show what crossed between the servers.
CONVERGE = 60


def q(value: str) -> str:
    return quote(value, safe="")


def png_file(width: int, height: int, color: tuple[int, int, int], directory: str) -> str:
    """A PNG picture of ``width`` x ``height`` (a coloured frame around a white box)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), color)
    ImageDraw.Draw(image).rectangle((width // 5, height // 5, width * 4 // 5, height * 4 // 5), fill=(255, 255, 255))
    path = os.path.join(directory, f"picture-{width}x{height}.png")
    image.save(path, "PNG")
    return path


# -- Hydrogen, through its UI -----------------------------------------------------------------


def hydrogen_login(tab: Tab, server: Any, localpart: str) -> None:
    """Log in on Hydrogen's login screen: homeserver URL, user name, password."""
    page = tab.page
    tab.open("index.html")
    page.wait_for_selector("#homeserver")
    page.fill("#homeserver", server.client_url)
    page.wait_for_selector("#username")
    page.fill("#username", localpart)
    page.fill("#password", "pw-" + localpart)
    page.click(".PasswordLoginView button[type=submit]")
    page.wait_for_selector(".SessionView button.create", timeout=CONVERGE * 1000)


def hydrogen_open(tab: Tab, name: str) -> None:
    """Open a room from the room list, by its name."""
    tab.page.click(f".RoomList li:has-text({name!r}) a", timeout=CONVERGE * 1000)
    tab.page.wait_for_selector(".RoomView_body .MessageComposer textarea")


def hydrogen_send(tab: Tab, text: str) -> None:
    tab.page.fill(".MessageComposer textarea", text)
    tab.page.press(".MessageComposer textarea", "Enter")


def hydrogen_bodies(tab: Tab) -> list[str]:
    """The text messages of the open room's timeline, in order (without their times)."""
    return tab.page.eval_on_selector_all(
        ".Timeline .Timeline_message .Timeline_messageBody",
        "els => els.map(e => Array.from(e.childNodes).filter(n => n.nodeType === Node.TEXT_NODE)"
        ".map(n => n.textContent).join('').trim()).filter(t => t)",
    )


def hydrogen_wait_message(tab: Tab, text: str) -> None:
    wait_dom(tab, lambda: text in hydrogen_bodies(tab), CONVERGE, f"the message {text!r}")


def hydrogen_images(tab: Tab) -> list[dict]:
    """The images of the open room's timeline: their source and loaded size.

    Hydrogen loads a picture only once its tile has been in the visible range, which it
    updates when the timeline scrolls; a picture that arrives while the timeline sits at
    the bottom can stay blank until then. So, as a person would, scroll the timeline to
    the top and back down before looking."""
    for where in ("0", "el.scrollHeight"):
        tab.page.eval_on_selector(".Timeline_scroller", f"el => el.scrollTop = {where}")
        tab.page.wait_for_timeout(150)
    return tab.page.eval_on_selector_all(
        ".Timeline .Timeline_message img",
        "els => els.map(e => ({src: e.src, alt: e.alt, complete: e.complete, width: e.naturalWidth, height: e.naturalHeight}))",
    )


def hydrogen_undecryptable(tab: Tab) -> list[str]:
    """What Hydrogen shows for events it could not decrypt (its message-status tiles of
    encrypted events), if any."""
    return tab.page.eval_on_selector_all(
        ".Timeline li",
        "els => els.filter(e => /decrypt|hasn't sent us the key/i.test(e.textContent)).map(e => e.textContent)",
    )


# -- our js-sdk chat page ---------------------------------------------------------------------


def chat_login(tab: Tab, server: Any, localpart: str) -> None:
    page = tab.page
    tab.open("chat.html")
    page.fill("#hs", server.client_url)
    page.fill("#user", localpart)
    page.fill("#password", "pw-" + localpart)
    page.click("#login button[type=submit]")
    wait_dom(tab, lambda: page.get_attribute("#status", "data-state") in ("PREPARED", "SYNCING"), CONVERGE, "the first sync")


def chat_events(tab: Tab) -> list[dict]:
    return tab.page.eval_on_selector_all(
        "#timeline li.event",
        "els => els.map(e => ({id: e.dataset.eventId, sender: e.dataset.sender, type: e.dataset.type,"
        " encrypted: e.dataset.encrypted === '1', utd: e.classList.contains('utd'),"
        " body: e.querySelector('.body').textContent,"
        " readBy: (e.querySelector('.read-by') || {dataset: {users: ''}}).dataset.users.split(' ').filter(u => u)}))",
    )


def chat_wait_event(tab: Tab, body: str) -> dict:
    def shown():
        return next((e for e in chat_events(tab) if e["body"] == body), None)

    return wait_dom(tab, shown, CONVERGE, f"the message {body!r}")


class BrowserTests(TestCase):
    """The five scenarios of issue 19."""

    def setUp(self) -> None:
        self.browser = Browser.get()
        self.synapse, self.fedserver = _pair.get()
        self.tabs: list[Tab] = []

    def tearDown(self) -> None:
        # What each browser showed at the end, passed or failed (CI keeps them).
        label = "end-" + self.id().rsplit(".", 1)[-1]
        for tab in self.tabs:
            try:
                tab.screenshot(label)
            finally:
                tab.close()

    def tab(self, name: str) -> Tab:
        tab = self.browser.tab(name)
        self.tabs.append(tab)
        return tab

    def user(self, server: Any) -> tuple[str, str]:
        """A new user on ``server``: ``(localpart, user id)``."""
        name = next(_names)
        user_id = server.register(name) if server is self.synapse else server.admin_user(name)
        return name, user_id

    def finish(self, label: str, *tabs: Tab) -> None:
        """Screenshots of every tab; then no unexpected error answer in any of them."""
        for tab in tabs:
            tab.screenshot(label)
        for tab in tabs:
            unexpected = tab.unexpected_errors()
            self.assertEqual(unexpected, [], f"{tab.name}'s browser got error answers no client should get:\n"
                             + "\n".join(map(str, unexpected)))

    # -- 1 ----------------------------------------------------------------------------------

    def test_hydrogen_timeline_survives_reload(self) -> None:
        """A fedserver user logs in to Hydrogen, creates a room in its UI, sends messages;
        after a reload the timeline is there (from Hydrogen's storage and a resumed /sync),
        and a second browser logging in afresh shows it too (from the server alone)."""
        localpart, _ = self.user(self.fedserver)
        tab = self.tab("hydrogen-fedserver")
        hydrogen_login(tab, self.fedserver, localpart)
        page = tab.page
        page.click("button.create")
        page.click(".popupContainer button:has-text('Create Room')")
        page.fill("#name", "Daily room")
        page.fill("#topic", "made in Hydrogen")
        page.check("#isPublic")
        # Hydrogen 0.3.1 makes no public room without an alias (it fails before asking).
        page.fill("#roomAlias", next(_names))
        page.click(".CreateRoomView button[type=submit]")
        hydrogen_open(tab, "Daily room")
        sent = [f"message {i} from Hydrogen" for i in range(3)]
        for text in sent:
            hydrogen_send(tab, text)
            hydrogen_wait_message(tab, text)
        # Sent means acknowledged: no message still pending (Hydrogen marks those).
        wait_dom(tab, lambda: not page.query_selector(".Timeline_message.unsent, .Timeline_message .unsent"),
                 CONVERGE, "the messages to be sent")
        page.reload()
        page.wait_for_selector(".Timeline .Timeline_message", timeout=CONVERGE * 1000)
        wait_dom(tab, lambda: hydrogen_bodies(tab) == sent, CONVERGE, "the timeline after the reload")
        self.assertEqual(page.inner_text(".RoomHeader h2"), "Daily room")

        again = self.tab("hydrogen-fedserver-second-device")
        hydrogen_login(again, self.fedserver, localpart)
        hydrogen_open(again, "Daily room")
        wait_dom(again, lambda: hydrogen_bodies(again) == sent, CONVERGE, "the timeline on a second device")
        self.finish("1-timeline-after-reload", tab, again)

    # -- 2 ----------------------------------------------------------------------------------

    def test_hydrogen_joins_synapse_room_by_alias_and_scrolls_back(self) -> None:
        """A Synapse user's public room with 80 messages and an alias; a fedserver user in
        Hydrogen joins it by alias (Join Room) and scrolls back to its beginning: every
        message shows, in order, and the timeline reaches the room's start (no gap left)."""
        _, owner = self.user(self.synapse)
        alias_local = next(_names)
        room_id = self.synapse.client("POST", "/_matrix/client/v3/createRoom", {
            "preset": "public_chat", "room_alias_name": alias_local, "name": "History on Synapse",
        }, as_user=owner)["room_id"]
        history = [f"history {i:03d}" for i in range(80)]
        for i, text in enumerate(history):
            self.synapse.client("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/h{i}",
                                {"msgtype": "m.text", "body": text}, as_user=owner)

        localpart, _ = self.user(self.fedserver)
        tab = self.tab("hydrogen-fedserver")
        hydrogen_login(tab, self.fedserver, localpart)
        page = tab.page
        page.click("button.create")
        page.click(".popupContainer button:has-text('Join Room')")
        page.fill(".JoinRoomView #id", f"#{alias_local}:{self.synapse.server_name}")
        page.click(".JoinRoomView button[type=submit]")
        page.wait_for_selector(".RoomView_body .MessageComposer textarea", timeout=CONVERGE * 1000)
        self.assertIn(q(room_id), page.url.replace("!", "%21"))
        hydrogen_wait_message(tab, history[-1])

        def scrolled_to_start():
            page.eval_on_selector(".Timeline_scroller", "el => el.scrollTop = 0")
            return hydrogen_bodies(tab)[:1] == [history[0]] and not page.query_selector(".Timeline .GapView")

        wait_dom(tab, scrolled_to_start, CONVERGE * 2, "the room's first message after scrolling back", interval=0.7)
        self.assertEqual(hydrogen_bodies(tab), history)
        self.finish("2-synapse-history-scrolled-back", tab)

    # -- 3 ----------------------------------------------------------------------------------

    def test_hydrogen_encrypted_direct_chat(self) -> None:
        """A fedserver user and a Synapse user, each in Hydrogen: they meet in a public
        room, the fedserver user opens a direct chat from the other's member panel
        (Hydrogen makes it encrypted and invites), the Synapse user sees the invite under
        the inviter's name and accepts, and both read each other's messages: nothing
        "unable to decrypt", and the server stored only ciphertext."""
        ours, our_id = self.user(self.fedserver)
        theirs, their_id = self.user(self.synapse)
        _, third_id = self.user(self.fedserver)
        a, b = self.tab("hydrogen-fedserver"), self.tab("hydrogen-synapse")
        hydrogen_login(a, self.fedserver, ours)
        hydrogen_login(b, self.synapse, theirs)

        # A public lobby made in Hydrogen, joined by alias from Synapse. A third member
        # keeps Hydrogen from taking the lobby for a direct chat of two.
        alias_local = next(_names)
        a.page.click("button.create")
        a.page.click(".popupContainer button:has-text('Create Room')")
        a.page.fill("#name", "Lobby")
        a.page.check("#isPublic")
        a.page.fill("#roomAlias", alias_local)
        a.page.click(".CreateRoomView button[type=submit]")
        hydrogen_open(a, "Lobby")
        b.page.click("button.create")
        b.page.click(".popupContainer button:has-text('Join Room')")
        b.page.fill(".JoinRoomView #id", f"#{alias_local}:{self.fedserver.server_name}")
        b.page.click(".JoinRoomView button[type=submit]")
        b.page.wait_for_selector(".RoomView_body .MessageComposer textarea", timeout=CONVERGE * 1000)
        lobby = self.fedserver.client("GET", f"/_matrix/client/v3/directory/room/{q('#' + alias_local + ':' + self.fedserver.server_name)}")["room_id"]
        self.fedserver.client("POST", f"/_matrix/client/v3/join/{q(lobby)}", {}, as_user=third_id)
        hydrogen_send(b, "hello from Synapse")
        hydrogen_wait_message(a, "hello from Synapse")

        # The direct chat, from the member panel of the Synapse user.
        a.page.locator(f"a.Timeline_messageAvatar[href$='/member/{their_id}']").first.click()
        a.page.click(".RightPanelView button:has-text('Open direct message')")
        b.page.wait_for_selector(".RoomList li:has(.badge) a, .RoomList li a", timeout=CONVERGE * 1000)
        # The invite is listed under the inviter's name: the stripped state of the invite
        # carries the inviter's membership event.
        b.page.click(f".RoomList li:has-text({ours!r}) a", timeout=CONVERGE * 1000)
        b.page.wait_for_selector(".InviteView, .RoomView_body", timeout=CONVERGE * 1000)
        self.assertIn(ours, b.page.inner_text(".middle"))
        b.page.click("button:has-text('Accept')")
        b.page.wait_for_selector(".RoomView_body .MessageComposer textarea", timeout=CONVERGE * 1000)
        hydrogen_open(a, their_id.split(":")[0][1:])
        for tab in (a, b):
            self.assertEqual(tab.page.get_attribute(".MessageComposer textarea", "placeholder"), "Send an encrypted message…")
        dm = b.page.url.rsplit("/room/", 1)[1]

        conversation = [(a, b, "secret 1 from fedserver"), (b, a, "secret 2 from Synapse"),
                        (a, b, "secret 3 from fedserver"), (b, a, "secret 4 from Synapse")]
        for sender, receiver, text in conversation:
            hydrogen_send(sender, text)
            hydrogen_wait_message(receiver, text)
        texts = [text for _, _, text in conversation]
        for tab in (a, b):
            wait_dom(tab, lambda tab=tab: hydrogen_bodies(tab) == texts, CONVERGE, "the whole conversation")
            self.assertEqual(hydrogen_undecryptable(tab), [])

        # What the server stored and serves: ciphertext only.
        messages = self.fedserver.client("GET", f"/_matrix/client/v3/rooms/{q(dm)}/messages",
                                         params={"dir": "b", "limit": "50"}, as_user=our_id)
        kinds = {e["type"] for e in messages["chunk"] if e.get("sender") in (our_id, their_id) and "state_key" not in e}
        self.assertEqual(kinds, {"m.room.encrypted"})
        self.finish("3-encrypted-direct-chat", a, b)

    # -- 4 ----------------------------------------------------------------------------------

    def test_hydrogen_images_across_servers(self) -> None:
        """Each of a Synapse user and a fedserver user posts a picture in Hydrogen (attach,
        "Send picture"); both pictures show in both browsers, at their size, loaded through
        each one's own server's authenticated media (/_matrix/client/v1/media, with the
        access token added by Hydrogen's service worker)."""
        ours, our_id = self.user(self.fedserver)
        theirs, their_id = self.user(self.synapse)
        room_id = self.synapse.client("POST", "/_matrix/client/v3/createRoom",
                                      {"preset": "public_chat", "name": "Pictures"}, as_user=their_id)["room_id"]
        via = q(self.synapse.server_name)
        wait_until(lambda: self.fedserver.client("POST", f"/_matrix/client/v3/join/{q(room_id)}?server_name={via}",
                                                 {}, as_user=our_id), CONVERGE, "the join over federation")
        a, b = self.tab("hydrogen-fedserver"), self.tab("hydrogen-synapse")
        hydrogen_login(a, self.fedserver, ours)
        hydrogen_login(b, self.synapse, theirs)
        hydrogen_open(a, "Pictures")
        hydrogen_open(b, "Pictures")
        folder = tempfile.mkdtemp(dir=os.getcwd())
        pictures = [(b, png_file(320, 200, (30, 120, 200), folder), self.synapse.server_name),
                    (a, png_file(240, 160, (200, 40, 60), folder), self.fedserver.server_name)]
        # One after the other, as people take turns: each picture shows in both browsers
        # before the next is sent.
        shown_in: dict[str, list[dict]] = {}
        for count, (sender, path, _) in enumerate(pictures, start=1):
            sender.page.click(".MessageComposer button.sendFile")
            with sender.page.expect_file_chooser() as chooser:
                sender.page.click(".popupContainer button:has-text('Send picture')")
            chooser.value.set_files(path)
            for tab in (a, b):
                images: list[dict] = []

                def loaded(tab=tab, images=images, count=count):
                    images[:] = hydrogen_images(tab)
                    shown = [i for i in images if i["complete"] and i["width"]]
                    return shown if len(shown) == count else None

                try:
                    shown_in[tab.name] = wait_dom(tab, loaded, CONVERGE, f"{count} picture(s)")
                except AssertionError as e:
                    raise AssertionError(f"{e}\nimages in the timeline: {images}") from None

        for tab, server in ((a, self.fedserver), (b, self.synapse)):
            shown = shown_in[tab.name]
            self.assertEqual(sorted((i["alt"], i["width"], i["height"]) for i in shown),
                             [("picture-240x160.png", 240, 160), ("picture-320x200.png", 320, 200)])
            for image in shown:
                self.assertTrue(image["src"].startswith(server.client_url + "/_matrix/client/v1/media/thumbnail/"), image)
            origins = {i["src"].split("/thumbnail/")[1].split("/")[0] for i in shown}
            self.assertEqual(origins, {q(self.synapse.server_name), q(self.fedserver.server_name)})
        self.finish("4-pictures-across-servers", a, b)

    # -- 5 ----------------------------------------------------------------------------------

    def test_typing_and_read_receipts_across_servers(self) -> None:
        """On our js-sdk page (Rust crypto, as Element): a fedserver user creates an
        encrypted room inviting a Synapse user, who accepts. Each sees the other typing
        while they type, and each sees the other's read receipt at its own message once
        the other's page has shown it; every message decrypts on both sides."""
        ours, our_id = self.user(self.fedserver)
        theirs, their_id = self.user(self.synapse)
        a, b = self.tab("jssdk-fedserver"), self.tab("jssdk-synapse")
        chat_login(a, self.fedserver, ours)
        chat_login(b, self.synapse, theirs)
        a.page.fill("#new-room-name", "Typing and receipts")
        a.page.fill("#new-room-invite", their_id)
        a.page.click("#new-room button[type=submit]")
        b.page.click("#rooms li[data-membership=invite] button.accept", timeout=CONVERGE * 1000)
        b.page.wait_for_selector("#composer:not([disabled])")
        wait_dom(a, lambda: any(e["type"] == "m.room.member" and e["body"] == f"{their_id} join" for e in chat_events(a)),
                 CONVERGE, "the join")

        for typist, watcher, typist_id in ((b, a, their_id), (a, b, our_id)):
            typist.page.type("#composer", "I am typ", delay=30)
            wait_dom(watcher, lambda w=watcher, u=typist_id: u in (w.page.get_attribute("#typing", "data-users") or "").split(),
                     CONVERGE, "the typing notification")
            self.assertIn("is typing", watcher.page.inner_text("#typing"))
            watcher.screenshot("5-typing-seen")
            typist.page.fill("#composer", "")
            typist.page.dispatch_event("#composer", "input")
            wait_dom(watcher, lambda w=watcher: not w.page.get_attribute("#typing", "data-users"), CONVERGE,
                     "the typing notification to stop")

        for sender, receiver, reader_id, text in ((a, b, their_id, "read me, Synapse"), (b, a, our_id, "read me, fedserver")):
            sender.page.fill("#composer", text)
            sender.page.press("#composer", "Enter")
            chat_wait_event(receiver, text)
            wait_dom(sender, lambda s=sender, t=text, r=reader_id: reader_id in next(
                (e["readBy"] for e in chat_events(s) if e["body"] == t), []), CONVERGE, f"{reader_id}'s read receipt")

        for tab in (a, b):
            events = [e for e in chat_events(tab) if e["type"] == "m.room.message"]
            self.assertEqual([e["body"] for e in events], ["read me, Synapse", "read me, fedserver"])
            self.assertTrue(all(e["encrypted"] for e in events), events)
            self.assertEqual([e for e in chat_events(tab) if e["utd"]], [])
        self.finish("5-typing-and-read-receipts", a, b)
