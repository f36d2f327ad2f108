"""An SMTP server for the tests (aiosmtpd), with the stub customers' mailboxes.

    python server.py PORT OUTBOX [--delay-ms N] [--cert PEM --key PEM [--implicit-tls]]
                                 [--user U --password P]

Listens on 127.0.0.1:PORT. Each message it accepts is written to OUTBOX as <n>.eml, whole (a
temporary name, then renamed). The mailboxes behave as the stub's test customers need:

- bounce-...   rejected for good at RCPT: 550 5.1.1
- slowmail-... refused for now at RCPT (451 4.2.0) the first SLOWMAIL_FAILURES times, then taken

--cert/--key: STARTTLS, required before anything else (--implicit-tls: TLS from the first
byte, as on port 465). --user/--password: AUTH (PLAIN, LOGIN) required before MAIL.

--delay-ms holds each DATA that long before answering (a slow server). The test stops the
server by killing the process ("the server went away") and starts it again on the same port.
Prints "ready" once it listens. Needs aiosmtpd (PyPI; .ci/run installs it).
"""

import argparse
import asyncio
import os
import signal
import ssl

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

SLOWMAIL_FAILURES = 2


class Mailboxes:
    def __init__(self, outbox, delay_ms):
        self.outbox = outbox
        self.delay = delay_ms / 1000.0
        self.refused = {}
        self.count = len([n for n in os.listdir(outbox) if n.endswith(".eml")])

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0]
        if local.startswith("bounce-"):
            return "550 5.1.1 mailbox unavailable"
        if local.startswith("slowmail-"):
            n = self.refused.get(address, 0)
            if n < SLOWMAIL_FAILURES:
                self.refused[address] = n + 1
                return "451 4.2.0 mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        self.count += 1
        # A name no restart reuses: the pid and a counter.
        name = os.path.join(self.outbox, f"{os.getpid()}-{self.count:06d}.eml")
        with open(name + ".part", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(name + ".part", name)
        return "250 Message accepted for delivery"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("outbox")
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--implicit-tls", action="store_true")
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()
    os.makedirs(args.outbox, exist_ok=True)
    options = {}
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        if args.implicit_tls:
            options["ssl_context"] = context
        else:
            options["tls_context"] = context
            options["require_starttls"] = True
    if args.user:
        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                auth_data.login == args.user.encode()
                and auth_data.password == args.password.encode()
            )
            return AuthResult(success=ok)

        options["authenticator"] = authenticator
        options["auth_required"] = True
        options["auth_require_tls"] = not args.implicit_tls
    controller = Controller(
        Mailboxes(args.outbox, args.delay_ms),
        hostname="127.0.0.1",
        port=args.port,
        **options,
    )
    controller.start()
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: controller.stop() or os._exit(0))
    while True:
        signal.pause()  # until the test kills the process


if __name__ == "__main__":
    main()
