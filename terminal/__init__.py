"""The terminal client's parts. client.py is the chapter; these are its sections.

client.py holds the Chat call's life (join, rejoin, pending lines) and
the entry point. Everything a person sees or types is here. Read in this
order:

1. `dial.py`: which server to reach, and a channel with TLS and
   credentials.
2. `link.py`: one Chat call: its requests queue and the receive thread
   that drains the responses and reports.
3. `lines.py`: what the user said that the server has not confirmed yet:
   kept, paced and sent again until its echo comes back; `rooms.py`: the
   rooms we are in, the current one, and the last id seen in each.
4. `commands.py`: what a line does (`/join`, `/msg`, `/who`, ...), in
   IRC's words.
5. `render.py`: how each server event looks (one line, cleaned, coloured
   on a terminal only), with `wrap.py` to wrap a long one, its body
   indented; `view.py`: on a terminal, the current room's lines shown,
   the other rooms' kept and counted; `roster.py`: who is in our rooms.
6. `prompt.py` (a terminal: prompt_toolkit, with `complete.py` for Tab)
   and `piped.py` (stdin piped: one line per event), the two ways of
   running it.

Where it plugs in: client.py imports these; nothing here imports the
server's modules (only the shared vocabulary: chat_pb2, sanitize.py and
store.py's id order).
"""
