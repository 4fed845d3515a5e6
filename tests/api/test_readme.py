"""The README says what the code does: its ops table is the registry's."""
from pathlib import Path

from vkloss.tools.generate import markdown_op_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readmes_ops_table_is_tools_list_markdown():
    text = README.read_text()
    start = text.index("<!-- ops table: python -m vkloss.tools list --markdown -->\n")
    table = text[start:text.index("<!-- end of the ops table -->")].split("\n", 1)[1].strip()
    assert table == markdown_op_table(), "run python -m vkloss.tools generate: it writes the table"
