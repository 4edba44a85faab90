"""An independent Modbus TCP server (pymodbus) serving meter register images, one unit id each.

Usage: pymodbus_tcp_meters.py PORT IMAGES_JSON
IMAGES_JSON maps a unit id to {"start": first register, "ir": [input registers]} (the same
words are served as holding registers). Listens on 127.0.0.1:PORT. Prints "ready" once the
server is about to serve. Run by tests/modbus_tcp.rs.
"""
import json
import sys

from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import StartTcpServer


def main():
    port, images = int(sys.argv[1]), json.loads(sys.argv[2])
    devices = {}
    for unit, image in images.items():
        # pymodbus blocks start at 1 for register 0.
        devices[int(unit)] = ModbusDeviceContext(
            ir=ModbusSequentialDataBlock(image["start"] + 1, image["ir"]),
            hr=ModbusSequentialDataBlock(image["start"] + 1, image["ir"]),
        )
    context = ModbusServerContext(devices=devices, single=False)
    print("ready", flush=True)
    StartTcpServer(context=context, address=("127.0.0.1", port), ignore_missing_devices=True)


if __name__ == "__main__":
    main()
