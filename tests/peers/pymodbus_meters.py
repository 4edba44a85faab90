"""An independent Modbus RTU slave (pymodbus) serving meter register images on a serial port.

Usage: pymodbus_meters.py PORT BAUD IMAGES_JSON
IMAGES_JSON maps a slave address to {"start": first register, "ir": [input registers]}.
Prints "ready" once the server is about to serve. Run by tests/pymodbus_peer.rs.
"""
import json
import sys

from pymodbus import FramerType
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import StartSerialServer


def main():
    port, baud, images = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    devices = {}
    for address, image in images.items():
        # pymodbus blocks start at 1 for register 0.
        block = ModbusSequentialDataBlock(image["start"] + 1, image["ir"])
        devices[int(address)] = ModbusDeviceContext(ir=block, hr=ModbusSequentialDataBlock(image["start"] + 1, image["ir"]))
    context = ModbusServerContext(devices=devices, single=False)
    print("ready", flush=True)
    StartSerialServer(context=context, framer=FramerType.RTU, port=port, baudrate=baud,
                      bytesize=8, parity="N", stopbits=1,
                      # Like a real bus: an address nobody has stays silent.
                      ignore_missing_devices=True)


if __name__ == "__main__":
    main()
