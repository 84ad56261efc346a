"""TouchOSC layout (``.tosc``): one labelled fader per parameter.

A ``.tosc`` file is zlib-compressed XML: a ``<lexml>`` root holding one
``GROUP`` node (the page) whose ``<children>`` are controls. Each control is a
``<node type='FADER'>`` with ``<properties>`` (name, frame, colour…), a
``<values>`` entry for ``x`` (default = the parameter's normalised default)
and an OSC message that sends (and receives, for the engine's echo) ``x`` as a
float on the parameter's ``…/norm`` address. Each fader has a ``LABEL`` above
it with the parameter name and unit.

Open the file in the TouchOSC editor and point its OSC connection 1 at the
engine's host and port (the engine echoes to the sender's port; set the
patch's ``osc.reply_port`` to TouchOSC's receive port if it differs).
"""

from __future__ import annotations

import uuid
import zlib
from xml.sax.saxutils import escape

from .osc import address_table

FADER_W, FADER_H, LABEL_H, GAP = 70, 360, 40, 14
PER_ROW = 12


def _cdata(s: str) -> str:
    return "<![CDATA[" + str(s).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _prop(kind: str, key: str, value) -> str:
    if kind == "r":
        x, y, w, h = value
        v = f"<x>{x}</x><y>{y}</y><w>{w}</w><h>{h}</h>"
    elif kind == "c":
        r, g, b, a = value
        v = f"<r>{r}</r><g>{g}</g><b>{b}</b><a>{a}</a>"
    elif kind == "s":
        v = _cdata(value)
    elif kind == "b":
        v = "1" if value else "0"
    else:
        v = escape(str(value))
    return f"<property type='{kind}'><key>{_cdata(key)}</key><value>{v}</value></property>"


def _node(kind: str, props: list[str], values: str = "", messages: str = "", children: str = "") -> str:
    out = f"<node ID='{uuid.uuid4()}' type='{kind}'><properties>{''.join(props)}</properties>"
    out += f"<values>{values}</values>"
    if messages:
        out += f"<messages>{messages}</messages>"
    if children:
        out += f"<children>{children}</children>"
    return out + "</node>"


def _osc_message(address: str) -> str:
    return ("<osc><enabled>1</enabled><send>1</send><receive>1</receive><feedback>0</feedback>"
            "<noDuplicates>0</noDuplicates><connections>00001</connections>"
            f"<triggers><trigger><var>{_cdata('x')}</var><condition>ANY</condition></trigger></triggers>"
            "<path><partial><type>CONSTANT</type><conversion>STRING</conversion>"
            f"<value>{_cdata(address)}</value><scaleMin>0</scaleMin><scaleMax>1</scaleMax></partial></path>"
            "<arguments><partial><type>VALUE</type><conversion>FLOAT</conversion>"
            f"<value>{_cdata('x')}</value><scaleMin>0</scaleMin><scaleMax>1</scaleMax></partial>"
            "</arguments></osc>")


def layout_xml(engine, title: str = "rtengine") -> str:
    """The layout's XML: one fader + label per parameter (list parameters get
    one fader per element), on the ``…/norm`` addresses."""
    entries = [e for e in address_table(engine).values() if e.norm and not e.alias]
    n = len(entries)
    cols = min(PER_ROW, max(1, n))
    rows = -(-n // cols)
    width = GAP + cols * (FADER_W + GAP)
    height = GAP + rows * (LABEL_H + FADER_H + 2 * GAP)
    children = []
    for k, e in enumerate(entries):
        r, col = divmod(k, cols)
        x = GAP + col * (FADER_W + GAP)
        y = GAP + r * (LABEL_H + FADER_H + 2 * GAP)
        p = e.param
        name = f"{e.stage}.{p.name}" + ("" if e.index is None else f"[{e.index}]")
        text = f"{e.stage}\n{p.name}" + ("" if e.index is None else f" {e.index}") + \
               (f" ({p.unit})" if p.unit else "")
        children.append(_node("LABEL", [
            _prop("s", "name", name + " label"), _prop("r", "frame", (x, y, FADER_W, LABEL_H)),
            _prop("c", "color", (0.2, 0.2, 0.2, 1)), _prop("b", "background", False),
            _prop("i", "textSize", 11), _prop("s", "text", text)]))
        default = p.to_norm(p.get(e.index))
        values = (f"<value><key>{_cdata('x')}</key><locked>0</locked>"
                  f"<lockedDefaultCurrent>0</lockedDefaultCurrent><default>{default:.6g}</default>"
                  "<defaultPull>0</defaultPull></value>")
        children.append(_node("FADER", [
            _prop("s", "name", name), _prop("r", "frame", (x, y + LABEL_H + GAP // 2, FADER_W, FADER_H)),
            _prop("c", "color", (0.0, 0.6, 0.9, 1)), _prop("i", "orientation", 0),
            _prop("b", "centered", False)], values=values, messages=_osc_message(e.address)))
    page = _node("GROUP", [_prop("s", "name", title), _prop("r", "frame", (0, 0, width, height)),
                           _prop("c", "color", (0, 0, 0, 1)), _prop("b", "background", True)],
                 children="".join(children))
    return "<?xml version='1.0' encoding='UTF-8'?><lexml version='3'>" + page + "</lexml>"


def write_tosc(engine, path, title: str = "rtengine") -> int:
    """Write the compressed layout atomically; returns the number of faders."""
    from ..io import atomic_path

    xml = layout_xml(engine, title)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(zlib.compress(xml.encode("utf-8")))
    return xml.count("type='FADER'")
