"""An independent Modbus RTU slave (pymodbus) serving register images given address by address.

Usage: pymodbus_sparse.py PORT BAUD IMAGES_JSON
IMAGES_JSON maps a slave address to {"ir": {"REG": value}, "hr": {"REG": value}, "fill": bool}.
With "fill", every register between the lowest and the highest given reads 0 unless given (a
meter that answers for its reserved registers); without it, a register not given is refused
with exception 02 (a meter that refuses them). Prints "ready" once the server is about to
serve. Run by tests/definitions.rs.
"""
import json
import sys

from pymodbus import FramerType
from pymodbus.datastore import (ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext,
                                ModbusSparseDataBlock)
from pymodbus.server import StartSerialServer


def block(values, fill):
    regs = {int(k): v for k, v in values.items()}
    if not regs:
        return ModbusSequentialDataBlock(1, [0])
    if fill:
        # A sequential block is addressed from 1 for register 0.
        lo, hi = min(regs), max(regs)
        return ModbusSequentialDataBlock(lo + 1, [regs.get(a, 0) for a in range(lo, hi + 1)])
    # A sparse block is addressed by register, one run of contiguous registers per entry.
    runs = {}
    start = None
    for a in sorted(regs):
        if start is None or a != start + len(runs[start]):
            start = a
            runs[start] = []
        runs[start].append(regs[a])
    return ModbusSparseDataBlock(runs)


def main():
    port, baud, images = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    devices = {}
    for address, image in images.items():
        fill = image.get("fill", True)
        devices[int(address)] = ModbusDeviceContext(ir=block(image.get("ir", {}), fill),
                                                    hr=block(image.get("hr", {}), fill))
    context = ModbusServerContext(devices=devices, single=False)
    print("ready", flush=True)
    StartSerialServer(context=context, framer=FramerType.RTU, port=port, baudrate=baud,
                      bytesize=8, parity="N", stopbits=1, ignore_missing_devices=True)


if __name__ == "__main__":
    main()
