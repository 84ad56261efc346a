"""Control: parameters, automation, patches, OSC, OSCQuery and TouchOSC layouts."""
