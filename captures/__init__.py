"""Capture files: pcap/pcapng/BinaryFILE reading and writing, and the synthetic market generator."""
