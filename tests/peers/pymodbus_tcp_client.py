"""An independent Modbus TCP client (pymodbus) asking pmtr's Modbus TCP server a few things.

Usage: pymodbus_tcp_client.py PORT UNIT SILENT_UNIT
Prints one JSON object: the unit's input registers 0..9, its holding registers 1..2 (not
polled by pmtr: read through the bus), the exception code of a write to holding register 2
(not writable), and the exception code of a read of SILENT_UNIT. Run by tests/modbus_server.rs.
"""
import json
import sys

from pymodbus.client import ModbusTcpClient


def answer(r):
    if r.isError():
        return {"exception": getattr(r, "exception_code", None)}
    return {"registers": list(r.registers)}


def main():
    port, unit, silent = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)
    if not client.connect():
        print(json.dumps({"error": "cannot connect"}))
        return
    out = {
        "input": answer(client.read_input_registers(0, count=10, device_id=unit)),
        "holding": answer(client.read_holding_registers(1, count=2, device_id=unit)),
        "write_refused": answer(client.write_register(2, 9, device_id=unit)),
        "silent": answer(client.read_input_registers(0, count=10, device_id=silent)),
    }
    client.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
