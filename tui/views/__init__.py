"""The console's views, one widget each, in the order of their tabs (`tui.console` switches them)."""

from .alerts import AlertsView
from .base import Table, View
from .data import DataView
from .entities import EntitiesView, EntityQuery
from .help import HelpView, help_text
from .models import ModelsView
from .overview import OverviewView

__all__ = ["AlertsView", "DataView", "EntitiesView", "EntityQuery", "HelpView", "ModelsView", "OverviewView",
           "Table", "View", "help_text"]
